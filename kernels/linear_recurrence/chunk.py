"""Chunked parallel form of the linear recurrence (the CPU training path, differentiable by autograd).

Inside a chunk of C tokens the output is a masked matrix product (GLA, Yang et al. 2024, §3.3);
across chunks the fp32 state is carried. Decays are always factored relative to a nearby reference
point inside the chunk, so every exponent that is evaluated is ≤ 0 and strong decays (RWKV-6 can
reach log-decay −20 per step) never overflow: per-channel decays use sub-chunks of SUBCHUNK tokens, with
the diagonal sub-blocks computed exactly from pairwise log-decay differences.

That stable per-channel form moves ~C/SUBCHUNK times more memory than a plain matrix product. When every
chunk's total log decay stays above −FACTOR_RANGE (mild decays, as at most inits), the chunk is instead
factored about its start, q·exp(b_t) and k·exp(−b_s) (GLA eq. 5), whose factors stay within
exp(±FACTOR_RANGE), far inside fp32; the chunk size is halved (down to MIN_FACTOR_CHUNK) until that holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64
SUBCHUNK = 8
FACTOR_RANGE = 60.0  # exp(±60) ≈ 1e±26: products of such factors stay normal fp32 numbers
MIN_FACTOR_CHUNK = 8


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


def factored_chunk_size(log_decay: torch.Tensor, chunk_size: int = CHUNK) -> int | None:
    """Largest chunk size (halving from `chunk_size`) whose every in-chunk cumulative per-channel log decay
    is ≥ −FACTOR_RANGE, or None when even MIN_FACTOR_CHUNK tokens decay more (use the stable form)."""
    B, T, H, K = log_decay.shape
    g = log_decay.detach().float()
    C = chunk_size
    while C >= min(MIN_FACTOR_CHUNK, chunk_size):
        N = -(-T // C)
        padded = F.pad(g, [0, 0, 0, 0, 0, N * C - T]).view(B, N, C, H, K)
        if padded.sum(dim=2).min() >= -FACTOR_RANGE:  # decays are ≤ 0: the chunk total is the extreme
            return C
        C //= 2
    return None


def linear_recurrence_chunk(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False, chunk_size: int = CHUNK, subchunk_size: int = SUBCHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    factored, sub_factored = False, False
    if log_decay is not None and log_decay.dim() == 4:
        # Factor whole chunks when their decay range allows, else sub-chunks (two-level), else pairwise.
        factored_size = factored_chunk_size(log_decay, chunk_size)
        factored = factored_size == chunk_size
        if factored_size is not None and not factored:
            subchunk_size, sub_factored = factored_size, True
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

    if factored:  # every |b| ≤ FACTOR_RANGE inside a chunk: exp(b_t − b_s) = exp(b_t) · exp(−b_s)
        o = torch.where(causal, (qc * b_query.exp()) @ (kc * (-b).exp()).transpose(-1, -2), 0.0) @ vc
    elif per_channel:
        o = _per_channel_intra_output(qc, kc, vc, b, b_query, causal, subchunk_size, sub_factored)
    else:
        o = (qc @ kc.transpose(-1, -2) * _masked_exp(b_query - b.transpose(-1, -2), causal)) @ vc
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


def _per_channel_intra_output(qc, kc, vc, b, b_query, causal, sub, factored=False):
    """Intra-chunk output for per-channel decays, stably, without any (C × C × K) tensor.

    Diagonal (sub × sub) blocks: A[t, s] = Σ_k q_tk k_sk exp(bq_tk − b_sk) from the pairwise differences,
    or, when `factored` (every sub-chunk's decay range is within FACTOR_RANGE), as one masked product
    factored about the sub-chunk start. Earlier sub-chunks of the same chunk reach a
    query through local states: S_i = exp(r_i − r_{i−1}) ⊙ S_{i−1} + Σ_{s ∈ i−1} exp(r_i − b_s) k_s v_sᵀ,
    read as (q_t ⊙ exp(bq_t − r_i)) S_i, with r_i the log decay just before sub-chunk i (exponents ≤ 0).
    """
    B, H, N, C, K = qc.shape
    V = vc.shape[-1]
    sub = min(sub, C)
    n_sub = C // sub
    assert n_sub * sub == C, "chunk size must be a multiple of the sub-chunk size"
    shape = (B, H, N, n_sub, sub)
    q, k, v = qc.view(*shape, K), kc.view(*shape, K), vc.view(*shape, V)
    bs, bq = b.view(*shape, K), b_query.view(*shape, K)
    ends = bs[..., -1:, :]  # (B, H, N, n_sub, 1, K): log decay at the end of each sub-chunk
    starts = torch.cat([ends.new_zeros(B, H, N, 1, 1, K), ends[:, :, :, :-1]], dim=3)
    if factored:
        scores = (q * (bq - starts).exp()) @ (k * (starts - bs).exp()).transpose(-1, -2)
        scores = torch.where(causal[:sub, :sub], scores, 0.0)
    else:
        decay = (bq.unsqueeze(-2) - bs.unsqueeze(-3)).clamp_(-80.0, 0.0).exp_()  # (..., sub, sub, K)
        scores = (decay * q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * causal[:sub, :sub]
    o = scores @ v  # (B, H, N, n_sub, sub, V)
    if n_sub > 1:
        kv = (k * (ends - bs).exp()).transpose(-1, -2) @ v  # (B, H, N, n_sub, K, V)
        step = (ends - starts).exp().squeeze(-2)[..., None]  # (B, H, N, n_sub, K, 1)
        states = [kv.new_zeros(B, H, N, K, V)]
        for i in range(n_sub - 1):
            states.append(step[:, :, :, i] * states[-1] + kv[:, :, :, i])
        o = o + (q * (bq - starts).exp()) @ torch.stack(states, dim=3)
    return o.reshape(B, H, N, C, V)
