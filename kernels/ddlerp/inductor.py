"""RWKV-6's token shift and decay for training: the torch form compiled by inductor (`kernels._inductor`). Autograd
runs the torch form's backward op by op, and on a CPU with bf16 products that backward is the largest part of
rwkv's training step (results/speed/speed_probes_2026-12-05.md)."""
from __future__ import annotations

from kernels._inductor import CompiledForTraining
from kernels.ddlerp.torch_form import ddlerp_torch

ddlerp_inductor = CompiledForTraining(ddlerp_torch, "the token shift", lambda x, *rest: x.shape[0] * x.shape[1])
