"""RoPE on CPU without autograd as one compiled pass (`kernels/native/sequence_forward.cpp`): each row rotated while
it is in cache, where the torch form takes five passes (a negation, a concatenation, two products, a sum), each
into fresh memory. No backward: where a gradient is to be recorded the call runs the training form
(`kernels.rotary.inductor`); for inputs other than fp32, or where the extension cannot be built, the torch form."""
from __future__ import annotations

import torch

from kernels import native
from kernels.rotary.inductor import rotary_inductor
from kernels.rotary.torch_form import rotary_torch


def rotary_native(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if native.records_gradient(x):
        return rotary_inductor(x, cos, sin)
    compiled = native.without_autograd(x)
    if compiled is None or x.dtype != torch.float32:
        return rotary_torch(x, cos, sin)
    return compiled.rotary(x, cos, sin)
