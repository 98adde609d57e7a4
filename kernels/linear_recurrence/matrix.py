"""The recurrence as one (T × T) mixing matrix per head: o = M v (MOHAWK's matrix-mixer view)."""
from __future__ import annotations

import torch


def linear_recurrence_matrix(q, k, log_decay=None, bonus=None, scale=None, row_block: int = 64) -> torch.Tensor:
    """M[b, h, t, s] = scale · Σ_c q_tc k_sc exp(Σ_{r=s+1..t} log_decay_rc) for s ≤ t (RWKV form: s < t
    plus the bonus diagonal). Rows are built in blocks so per-channel decays need O(block · T · K) memory.
    Returns (B, H, T, T) in fp32."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    q, k = q.float().transpose(1, 2), k.float().transpose(1, 2)  # (B, H, T, K)
    if log_decay is None:
        g = q.new_zeros(B, H, T, 1)
    else:
        g = log_decay.float().transpose(1, 2)
        g = g if g.dim() == 4 else g[..., None]
    b = g.cumsum(dim=2)  # (B, H, T, 1|K)
    b_query = b - g if bonus is not None else b  # RWKV reads S_{t-1}
    t_idx = torch.arange(T, device=q.device)
    rows = []
    for start in range(0, T, row_block):
        stop = min(start + row_block, T)
        mask = t_idx[start:stop, None] > t_idx[None, :] if bonus is not None else t_idx[start:stop, None] >= t_idx[None, :]
        diff = b_query[:, :, start:stop, None, :] - b[:, :, None, :, :]  # (B, H, rows, T, 1|K)
        weight = diff.masked_fill(~mask[..., None], float("-inf")).exp()
        if weight.shape[-1] == 1:  # one decay per head: a matmul, no (rows, T, K) product
            rows.append((q[:, :, start:stop] @ k.transpose(-1, -2)) * weight[..., 0])
        else:
            rows.append((q[:, :, start:stop, None, :] * k[:, :, None, :, :] * weight).sum(-1))
    M = torch.cat(rows, dim=2) if rows else q.new_zeros(B, H, 0, 0)
    if bonus is not None:
        diagonal = (q * bonus.float()[None, :, None, :] * k).sum(-1)  # (B, H, T)
        M = M + torch.diag_embed(diagonal)
    return scale * M
