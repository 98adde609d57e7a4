"""A mixer's read-out norm and gate for training: the torch form compiled by inductor (`kernels._inductor`), its
statistics, affine, gate and their gradients fused (results/speed/speed_probes_2026-12-05.md)."""
from __future__ import annotations

from kernels._inductor import CompiledForTraining
from kernels.head_norm.torch_form import head_norm_torch

head_norm_inductor = CompiledForTraining(head_norm_torch, "the read-out norm", lambda x, *rest: x.shape[:-2].numel())
