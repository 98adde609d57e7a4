"""Chunked parallel form of the linear recurrence (the CPU training path, differentiable by autograd).

Inside a chunk of C tokens the output is a masked matrix product (GLA, Yang et al. 2024, §3.3);
across chunks the fp32 state is carried. Decays are always factored relative to a nearby reference
point inside the chunk, so every exponent that is evaluated is ≤ 0 and strong decays (RWKV-6 can
reach log-decay −20 per step) never overflow: per-channel decays use sub-chunks of 16 tokens, with
the diagonal sub-blocks computed exactly from pairwise log-decay differences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64
SUBCHUNK = 8


def _to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, H, ...) -> contiguous (B, H, N, C, ...), zero padded at the end."""
    B, T, H = x.shape[:3]
    pad = n_chunks * chunk - T
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, 0, 0, pad])
    return x.transpose(1, 2).contiguous().view(B, H, n_chunks, chunk, *x.shape[3:])


def _masked_exp(diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """exp(diff) where mask, else 0. Valid entries have diff ≤ 0; clamping at −80 keeps exp off the
    slow denormal path (exp(−80) ≈ 2e−35, below fp32 resolution of any sum it enters)."""
    return torch.where(mask, diff.clamp(-80.0, 0.0).exp(), 0.0)


def linear_recurrence_chunk(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False, chunk_size: int = CHUNK, subchunk_size: int = SUBCHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    qc, kc, vc = (_to_chunks(x.float(), N, C) for x in (q, k, v))  # (B, H, N, C, K|V)
    per_channel = log_decay is not None and log_decay.dim() == 4
    if log_decay is None:
        g = qc.new_zeros(B, H, N, C, 1)
    else:
        g = _to_chunks(log_decay.float(), N, C)
        g = g if per_channel else g[..., None]
    b = g.cumsum(dim=3)  # inclusive log decay from the chunk start, (B, H, N, C, 1|K)
    b_query = b - g if bonus is not None else b  # RWKV reads S_{t-1}: exclusive of token t's decay
    b_last = b[:, :, :, -1:]  # (B, H, N, 1, 1|K)

    idx = torch.arange(C, device=q.device)
    causal = idx[:, None] > idx[None, :] if bonus is not None else idx[:, None] >= idx[None, :]

    if per_channel:
        scores = _per_channel_intra_scores(qc, kc, b, b_query, causal, subchunk_size)
    else:
        scores = qc @ kc.transpose(-1, -2) * _masked_exp(b_query - b.transpose(-1, -2), causal)
    o = scores @ vc
    if bonus is not None:
        o = o + (qc * bonus.float()[None, :, None, None, :] * kc).sum(-1, keepdim=True) * vc

    # Carry the state across chunks: only elementwise work is sequential.
    k_to_end = kc * (b_last - b).exp()  # exponent ≤ 0
    chunk_kv = k_to_end.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    chunk_decay = b_last.squeeze(3).exp()  # (B, H, N, 1|K)
    state = qc.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states_before = []
    for n in range(N):
        states_before.append(state)
        state = chunk_decay[:, :, n, :, None] * state + chunk_kv[:, :, n]
    states_before = torch.stack(states_before, dim=2)  # (B, H, N, K, V)
    o = o + (qc * b_query.exp()) @ states_before
    o = (scale * o).movedim(1, 3).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), (state if output_final_state else None)


def _per_channel_intra_scores(qc, kc, b, b_query, causal, sub):
    """Intra-chunk scores A[t, s] = Σ_k q_tk k_sk exp(bq_tk − b_sk) for per-channel decays, stably."""
    B, H, N, C, K = qc.shape
    sub = min(sub, C)
    n_sub = C // sub
    assert n_sub * sub == C, "chunk size must be a multiple of the sub-chunk size"
    idx = torch.arange(C, device=qc.device)
    block = idx // sub
    # Off-diagonal sub-blocks: reference point r_i = b at the last token before sub-chunk i.
    ref = torch.cat([b.new_zeros(B, H, N, 1, K), b[:, :, :, sub - 1:C - 1:sub]], dim=3)  # (B,H,N,n_sub,K)
    ref_per_token = ref.repeat_interleave(sub, dim=3)  # reference of each query's sub-chunk
    q_scaled = qc * (b_query - ref_per_token).exp()  # exponent ≤ 0
    earlier = block[None, :] < torch.arange(n_sub, device=qc.device)[:, None]  # (n_sub, C): key s before sub-chunk i
    k_scaled = kc[:, :, :, None] * _masked_exp(ref[:, :, :, :, None] - b[:, :, :, None], earlier[..., None])
    off = q_scaled.reshape(B, H, N, n_sub, sub, K) @ k_scaled.transpose(-1, -2)  # (B,H,N,n_sub,sub,C)
    scores = off.reshape(B, H, N, C, C)
    # Diagonal sub-blocks: exact pairwise decay differences, (sub × sub × K) per block.
    qd = qc.reshape(B, H, N, n_sub, sub, 1, K)
    kd = kc.reshape(B, H, N, n_sub, 1, sub, K)
    bqd = b_query.reshape(B, H, N, n_sub, sub, 1, K)
    bd = b.reshape(B, H, N, n_sub, 1, sub, K)
    local = causal[:sub, :sub]
    diag = (qd * kd * _masked_exp(bqd - bd, local[..., None])).sum(-1)  # (B,H,N,n_sub,sub,sub)
    eye_blocks = torch.eye(n_sub, dtype=qc.dtype, device=qc.device)
    scores = scores + torch.einsum("bhnixy,ij->bhnixjy", diag, eye_blocks).reshape(B, H, N, C, C)
    return scores
