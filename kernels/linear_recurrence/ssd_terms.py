"""Mamba-2's per-token key scale and skip term around the linear recurrence (Dao & Gu 2024, §7:
h_t = a_t h_{t−1} + Δ_t B_t x_tᵀ, y_t = C_tᵀ h_t + D ⊙ x_t) as torch ops: how every backend but the compiled scan,
which applies both in its own pass, takes `key_scale` (Δ) and `skip` (D)."""
from __future__ import annotations

import torch


def scaled_keys(k: torch.Tensor, key_scale: torch.Tensor | None) -> torch.Tensor:
    """k (B, T, H, K) times key_scale (B, T, H), or k where there is none."""
    return k if key_scale is None else k * key_scale[..., None]


def with_skip(o: torch.Tensor, v: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """o + skip ⊙ v (skip (H,) per head) in fp32, or o where there is none."""
    return o if skip is None else torch.addcmul(o, skip.float()[:, None], v.float())
