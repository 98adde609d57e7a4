"""The gated delta rule as a (T × T) mixing matrix per head (zero initial state)."""
from __future__ import annotations

import torch


def delta_rule_matrix(q, k, beta, log_decay=None, scale=None) -> torch.Tensor:
    """M = scale · (Q Kᵀ ⊙ Γ) (I + L)⁻¹ diag(β), with Γ[t, s] = γ_t/γ_s (s ≤ t) and
    L[t, s] = β_t Γ[t, s] k_tᵀ k_s (s < t): the one-chunk WY form over the whole sequence, so o = M v.
    Returns (B, H, T, T) in fp32."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    q, k = q.float().transpose(1, 2), k.float().transpose(1, 2)
    beta = beta.float().transpose(1, 2)[..., None]  # (B, H, T, 1)
    b = q.new_zeros(B, H, T, 1) if log_decay is None else log_decay.float().transpose(1, 2)[..., None].cumsum(2)
    idx = torch.arange(T, device=q.device)
    gamma = (b - b.transpose(-1, -2)).masked_fill(~(idx[:, None] >= idx[None, :]), float("-inf")).exp()
    # β and the scale go into the (T × K) factors, not the (T × T) products. The solve reads L's strict lower
    # triangle only (unitriangular: its diagonal is taken as ones), so L needs no tril.
    L = ((beta * k) @ k.transpose(-1, -2)) * gamma
    scores = ((scale * q) @ k.transpose(-1, -2)) * gamma
    # X (I + L) = scale · (Q Kᵀ ⊙ Γ), solved from the right, then M = X diag(β): one triangular solve with
    # T right-hand sides, not the inverse times diag(β) and a further (T × T)(T × T) product
    return torch.linalg.solve_triangular(L, scores, upper=False, left=False, unitriangular=True) * \
        beta.transpose(-1, -2)
