"""Chunked parallel form of the gated delta rule (WY / UT-transform form; Yang et al. 2024, DeltaNet §3).

Writing the update as S_t = α_t S_{t-1} + k_t u_tᵀ with u_t = β_t (v_t − α_t S_{t-1}ᵀ k_t), the
"new values" u of a chunk solve a unit lower-triangular system (I + L) U = diag(β) V − diag(β γ) K S_0,
L[t, s] = β_t (γ_t/γ_s) k_tᵀ k_s (s < t), γ_t the cumulative decay inside the chunk. Everything except
the chunk-to-chunk state hand-over is parallel; every decay ratio evaluated is γ_t/γ_s with s ≤ t (≤ 1).
"""
from __future__ import annotations

import torch

from kernels.linear_recurrence.chunk import CHUNK, _masked_exp, _to_chunks


def delta_rule_chunk(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False,
                     chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    qc, kc, vc = (_to_chunks(x.float(), N, C) for x in (q, k, v))  # (B, H, N, C, K|V)
    bc = _to_chunks(beta.float()[..., None], N, C)  # (B, H, N, C, 1)
    if log_decay is None:
        g = bc.new_zeros(B, H, N, C, 1)
    else:
        g = _to_chunks(log_decay.float()[..., None], N, C)
    b = g.cumsum(dim=3)  # log γ_t, (B, H, N, C, 1)
    idx = torch.arange(C, device=q.device)
    ratio_incl = _masked_exp(b - b.transpose(-1, -2), idx[:, None] >= idx[None, :])  # γ_t/γ_s, s ≤ t
    strict = ratio_incl.tril(-1)
    L = bc * (kc @ kc.transpose(-1, -2)) * strict
    eye = torch.eye(C, dtype=qc.dtype, device=qc.device)
    system = eye + L
    # Both right-hand sides at once: [β v | β γ k]
    rhs = torch.cat([bc * vc, bc * b.exp() * kc], dim=-1)
    solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
    u_free, w = solved[..., :V], solved[..., V:]  # new values U = u_free − w S_0
    attn = (qc @ kc.transpose(-1, -2)) * ratio_incl  # (B, H, N, C, C)
    # With U = u_free − w S_0:  o = (q γ − attn w) S_0 + attn u_free,
    # S_next = (γ_C I − k̃ᵀ w) S_0 + k̃ᵀ u_free, k̃ = k γ_C/γ. Only the last line is sequential.
    query_to_state = qc * b.exp() - attn @ w
    k_to_end = (kc * (b[:, :, :, -1:] - b).exp()).transpose(-1, -2)  # (B, H, N, K, C)
    eye_k = torch.eye(K, dtype=qc.dtype, device=qc.device)
    transition = b[:, :, :, -1, :, None].exp() * eye_k - k_to_end @ w  # (B, H, N, K, K)
    chunk_kv = k_to_end @ u_free  # (B, H, N, K, V)

    state = qc.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states_before = []
    for n in range(N):
        states_before.append(state)
        state = torch.baddbmm(chunk_kv[:, :, n].reshape(B * H, K, V), transition[:, :, n].reshape(B * H, K, K),
                              state.reshape(B * H, K, V)).view(B, H, K, V)
    o = query_to_state @ torch.stack(states_before, dim=2) + attn @ u_free  # (B, H, N, C, V)
    o = (scale * o).movedim(1, 3).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), (state if output_final_state else None)
