"""Rotary position embedding as torch ops (the reference form; compiled for training by `inductor.py`)."""
from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x₁, x₂) → (−x₂, x₁) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()  # cast once: both terms' gradients add up in fp32 and are rounded once
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)
