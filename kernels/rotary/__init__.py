"""rotary: rotary position embedding (Su et al. 2021, RoFormer eq. 34) in Llama's rotate_half convention.

y = x ⊙ cos + rotate_half(x) ⊙ sin, rotate_half(x₁, x₂) = (−x₂, x₁) over the halves of each head's channels, with
cos and sin of the positions' angles (duplicated over the halves); the arithmetic in fp32, y in x's dtype.
"""
from __future__ import annotations

import torch

from kernels._backend import pick_backend
from kernels.rotary.inductor import rotary_inductor
from kernels.rotary.native import rotary_native
from kernels.rotary.torch_form import rotary_torch

__all__ = ["BACKENDS", "rotary", "rotary_inductor", "rotary_native", "rotary_torch"]

BACKENDS = {"torch": rotary_torch, "native": rotary_native, "inductor": rotary_inductor}


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """x (B, T, H, D), D even; cos, sin (1, T, 1, D) fp32 (broadcast over batch and heads). `auto`: on CPU the
    compiled pass (`native`; it hands a call recording a gradient to the inductor-compiled training form), elsewhere
    the torch form."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary: x must be (B, T, H, D) with D even, got {tuple(x.shape)}")
    expected = (1, x.shape[1], 1, x.shape[-1])
    for name, angle in (("cos", cos), ("sin", sin)):
        if tuple(angle.shape) != expected:
            raise ValueError(f"rotary: {name} must be {expected} for x {tuple(x.shape)}, got {tuple(angle.shape)}")
    return pick_backend(backend, BACKENDS, x.device, "rotary")(x, cos, sin)
