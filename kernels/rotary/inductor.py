"""RoPE for training: the torch form compiled by inductor (`kernels._inductor`), its widening, two products, the
half rotation, the sum and the narrowing one pass forward and one backward instead of about six each
(results/speed/rotary_ab.txt); the same values, bit for bit, as the torch form."""
from __future__ import annotations

from kernels._inductor import CompiledForTraining
from kernels.rotary.torch_form import rotary_torch

rotary_inductor = CompiledForTraining(rotary_torch, "the rotary embedding", lambda x, *rest: x.shape[0] * x.shape[1])
