"""Chunked parallel form of the linear recurrence (the CPU training path, differentiable by autograd).

Inside a chunk of C tokens the output is a masked matrix product (GLA, Yang et al. 2024, §3.3); across
chunks the fp32 states are carried by a grouped scan whose groups are small matrix products.

Each chunk takes its own form, chosen from its decays:
- factored (GLA eq. 5): when the chunk's log decay spans at most FACTOR_RANGE in every channel,
  exp(b_t − b_s) = exp(b_t − c) · exp(c − b_s) about the chunk's midpoint c, each factor within
  exp(±FACTOR_RANGE/2) ≈ 1e±13, so the scores are one plain masked matrix product;
- stable, for chunks that decay faster (RWKV-6 channels reach −20 per step): per-head decays use the
  exact pairwise C × C decay matrix; per-channel decays use sub-chunks of SUBCHUNK tokens whose diagonal
  blocks are factored the same way where their span allows, else built from exact pairwise differences,
  and earlier sub-chunks reach a query through local states. No C × C × K tensor is ever formed.
Every exponent that is evaluated is ≤ FACTOR_RANGE/2, and ≤ 0 wherever the product is kept.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

CHUNK = 64
SUBCHUNK = 8
# Largest log-decay span that is factored. Factors stay within exp(±30); the carry meets an update scaled up
# to exp(30) with a weight down to exp(−60 + decay), so only contributions below exp(−27) can underflow.
FACTOR_RANGE = 60.0
STATE_GROUP = 16  # chunks whose states come from one matrix product; groups are carried sequentially


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


def _span_fits(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Whether a block's log decay (from `start` before it to `end` after it, ≤ 0 steps) spans at most
    FACTOR_RANGE in every channel; reduces all but the leading (block) dimension."""
    return (end - start).flatten(1).amin(dim=1) >= -FACTOR_RANGE


def _by_form(fits: torch.Tensor, tensors: tuple, factored: Callable, stable: Callable) -> torch.Tensor:
    """Apply `factored` to the blocks (leading dimension) that fit and `stable` to the rest, each on its own
    subset (no discarded branch, so no overflow can reach a gradient), and reassemble in order."""
    if bool(fits.all()):
        return factored(*tensors)
    if not bool(fits.any()):
        return stable(*tensors)
    fast, slow = fits.nonzero().squeeze(1), (~fits).nonzero().squeeze(1)
    out_fast = factored(*(t[fast] for t in tensors))
    out_slow = stable(*(t[slow] for t in tensors))
    out = out_fast.new_zeros((fits.shape[0],) + out_fast.shape[1:])
    return out.index_copy(0, fast, out_fast).index_copy(0, slow, out_slow)


def _causal(length: int, strict: bool, device) -> torch.Tensor:
    """Which (t, s) pairs a query reads: s ≤ t, or s < t for RWKV's bonus form (it reads S_{t−1})."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril_(-1 if strict else 0)


def _factored_scores(q, k, b_query, b, start, end, strict):
    """Masked scores Σ_k q_tk k_sk exp(bq_tk − b_sk) of blocks whose span fits, factored about the midpoint.
    Masked (t < s) products may overflow to inf; tril_ overwrites them and nothing multiplies them."""
    mid = (start + end) / 2
    scores = (q * (b_query - mid).exp()) @ (k * (mid - b).exp()).transpose(-1, -2)
    return scores.tril_(-1 if strict else 0)  # in place: the product is fresh and its backward does not read it


def _pairwise_scores(q, k, b_query, b, strict):
    """Masked scores from exact pairwise log-decay differences (every kept exponent ≤ 0)."""
    causal = _causal(q.shape[-2], strict, q.device)
    if b.shape[-1] == 1:  # per head: a (C × C) decay matrix
        return (q @ k.transpose(-1, -2)) * _masked_exp(b_query - b.transpose(-1, -2), causal)
    decay = (b_query.unsqueeze(-2) - b.unsqueeze(-3)).clamp_(-80.0, 0.0).exp_()  # (..., L, L, K), L small
    return (decay * q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * causal


def _with_bonus(scores, bonus_diag):
    """RWKV-6's bonus term q_t·(u ⊙ k_t) sits on the diagonal, which the strict mask left empty."""
    if bonus_diag is not None:
        scores.diagonal(dim1=-2, dim2=-1).add_(bonus_diag)
    return scores


def chunk_forms(log_decay: torch.Tensor | None, chunk_size: int = CHUNK, subchunk_size: int = SUBCHUNK) -> dict:
    """Fractions of chunks (and of the stable chunks' sub-chunks) that take each form on these decays."""
    if log_decay is None:
        return {"factored_chunks": 1.0}
    g = log_decay.detach().float()
    g = g if g.dim() == 4 else g[..., None]
    B, T, H, K = g.shape
    N = max(1, -(-T // chunk_size))
    b = _to_chunks(g, N, chunk_size).cumsum(dim=3).flatten(0, 2)  # (M, C, K)
    fits = _span_fits(torch.zeros_like(b[:, :1]), b[:, -1:])
    forms = {"factored_chunks": fits.float().mean().item()}
    if K > 1 and not bool(fits.all()):
        ends = b[~fits].view(-1, chunk_size // subchunk_size, subchunk_size, K)[:, :, -1:]
        starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
        forms["factored_subchunks_of_stable"] = _span_fits(starts.flatten(0, 1), ends.flatten(0, 1)).float().mean().item()
    return forms


def linear_recurrence_chunk(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False, chunk_size: int = CHUNK, subchunk_size: int = SUBCHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    qc, kc, vc = (_to_chunks(x.float(), N, C) for x in (q, k, v))  # (B, H, N, C, K|V)
    strict = bonus is not None  # RWKV reads S_{t-1}: exclusive of token t's decay, bonus on the diagonal
    bonus_diag = None if bonus is None else (qc * bonus.float()[None, :, None, None, :] * kc).sum(-1)  # (B, H, N, C)
    if log_decay is None:
        g = qc.new_zeros(B, H, N, C, 1)
    else:
        g = _to_chunks(log_decay.float(), N, C)
        g = g if log_decay.dim() == 4 else g[..., None]  # (B, H, N, C, 1|K)
    b = g.cumsum(dim=3)  # inclusive log decay from the chunk start
    b_query = b - g if strict else b
    b_last = b[:, :, :, -1:]  # (B, H, N, 1, 1|K)
    fits = _span_fits(torch.zeros_like(b_last).flatten(0, 2), b_last.flatten(0, 2)).view(B, H, N, 1, 1)
    # One pair of factors per chunk serves its scores, its state update and its state read:
    # q_t·exp(bq_t − ref_q) and k_s·exp(ref_k − b_s), about the midpoint where the chunk's span fits
    # (|exponent| ≤ FACTOR_RANGE/2), else ref_q = 0 and ref_k = the chunk's end (exponents ≤ 0).
    mid = b_last / 2
    ref_q = torch.where(fits, mid, 0.0)
    ref_k = torch.where(fits, mid, b_last)
    q_f = qc * (b_query - ref_q).exp()
    k_f = kc * (ref_k - b).exp()
    o = _intra_chunk(qc, kc, vc, b, b_query, q_f, k_f, fits, strict, bonus_diag, subchunk_size)
    # exp(b_last − b_s) k_s = exp(b_last − ref_k) k_f,s and q_t exp(bq_t) = exp(ref_q) q_f,t: the carry applies both
    chunk_kv = k_f.transpose(-1, -2) @ vc  # (B, H, N, K, V)
    states_read, state = _carry_states(chunk_kv, b_last.squeeze(3), (b_last - ref_k).squeeze(3),
                                       ref_q.squeeze(3), initial_state)
    # o + q S, times the scale, in one call (the inter-chunk product accumulates into the intra-chunk one)
    o = torch.baddbmm(o.flatten(0, 2), q_f.flatten(0, 2), states_read.flatten(0, 2), beta=scale, alpha=scale)
    o = o.view(B, H, N * C, V).transpose(1, 2)[:, :T].contiguous()
    return o.to(out_dtype), (state if output_final_state else None)


def _intra_chunk(qc, kc, vc, b, b_query, q_f, k_f, fits, strict, bonus_diag, sub):
    """Σ_{s ≤ t in the chunk} (q_t · exp(bq_t − b_s) ⊙ k_s) v_s for every chunk, each in its own form:
    factored chunks reuse the shared factors, the others are rebuilt stably from the raw q, k and decays."""
    B, H, N, C, K = qc.shape
    flat = tuple(x.flatten(0, 2) for x in (qc, kc, vc, b, b_query, q_f, k_f))  # (M, C, ·), M = B·H·N chunks
    diag = flat[0].new_zeros(flat[0].shape[:2]) if bonus_diag is None else bonus_diag.flatten(0, 2)
    bonus_of = (lambda d: d) if strict else (lambda d: None)

    def factored(q, k, v, b, bq, q_f, k_f, diag):
        return _with_bonus((q_f @ k_f.transpose(-1, -2)).tril_(-1 if strict else 0), bonus_of(diag)) @ v

    def stable(q, k, v, b, bq, q_f, k_f, diag):
        if b.shape[-1] == 1:
            return _with_bonus(_pairwise_scores(q, k, bq, b, strict), bonus_of(diag)) @ v
        return _per_channel_subchunks(q, k, v, b, bq, strict, bonus_of(diag), sub)

    return _by_form(fits.flatten(), flat + (diag,), factored, stable).view(B, H, N, C, -1)


def _per_channel_subchunks(q, k, v, b, b_query, strict, bonus_diag, sub):
    """Intra-chunk output of fast-decaying chunks (M, C, ·) with per-channel decays, in sub-chunks.

    Diagonal (sub × sub) blocks: factored about their midpoint where their span fits, else exact pairwise.
    Earlier sub-chunks of the same chunk reach a query through local states:
    S_i = exp(r_i − r_{i−1}) ⊙ S_{i−1} + Σ_{s ∈ i−1} exp(r_i − b_s) k_s v_sᵀ, read as (q_t ⊙ exp(bq_t − r_i)) S_i,
    with r_i the log decay just before sub-chunk i (every exponent ≤ 0).
    """
    M, C, K = q.shape
    V = v.shape[-1]
    sub = min(sub, C)
    n_sub = C // sub
    assert n_sub * sub == C, "chunk size must be a multiple of the sub-chunk size"
    q, k, v, bs, bq = (x.reshape(M, n_sub, sub, x.shape[-1]) for x in (q, k, v, b, b_query))
    ends = bs[:, :, -1:]  # (M, n_sub, 1, K): log decay at the end of each sub-chunk
    starts = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], dim=1)
    diag = q.new_zeros(M, n_sub, sub) if bonus_diag is None else bonus_diag.reshape(M, n_sub, sub)

    def factored(q, k, v, b, bq, start, end, diag):
        return _with_bonus(_factored_scores(q, k, bq, b, start, end, strict), diag if strict else None) @ v

    def pairwise(q, k, v, b, bq, start, end, diag):
        return _with_bonus(_pairwise_scores(q, k, bq, b, strict), diag if strict else None) @ v

    blocks = tuple(x.flatten(0, 1) for x in (q, k, v, bs, bq, starts, ends, diag))
    o = _by_form(_span_fits(blocks[5], blocks[6]), blocks, factored, pairwise).view(M, n_sub, sub, V)
    if n_sub > 1:
        kv = (k * (ends - bs).exp()).transpose(-1, -2) @ v  # (M, n_sub, K, V)
        step = (ends - starts).exp().squeeze(-2)[..., None]  # (M, n_sub, K, 1)
        states = [kv.new_zeros(M, K, V)]
        for i in range(n_sub - 1):
            states.append(step[:, i] * states[-1] + kv[:, i])
        o = o + (q * (bq - starts).exp()) @ torch.stack(states, dim=1)
    return o.reshape(M, C, V)


def _carry_states(chunk_kv, chunk_log_decay, write_log_scale, read_log_scale, initial_state):
    """States read by each chunk and the final state of S_{n+1} = exp(a_n) ⊙ S_n + exp(w_n) ⊙ chunk_kv_n.

    chunk_kv: (B, H, N, K, V); a_n (chunk log decays), w_n (write scales) and r_n (read scales, the state
    chunk n reads is exp(r_n) ⊙ S_n): (B, H, N, 1|K), all ≤ 0. Inside a group of G chunks,
    S_{g+i} = exp(P_i) ⊙ S_g + Σ_{j<i} exp(P_i − P_{j+1} + w_{g+j}) ⊙ chunk_kv_{g+j}, P the group's exclusive
    cumulative log decay: one (G+1) × G matrix product per group (exponents ≤ 0); groups run in sequence.
    """
    B, H, N, K, V = chunk_kv.shape
    G = min(STATE_GROUP, N)
    n_groups = -(-N // G)
    pad = n_groups * G - N  # padded chunks carry nothing and do not decay
    kv = F.pad(chunk_kv, [0, 0, 0, 0, 0, pad]).view(B, H, n_groups, G, K, V)
    a, w, r = (F.pad(x, [0, 0, 0, pad]).view(B, H, n_groups, G, -1) for x in (chunk_log_decay, write_log_scale,
                                                                            read_log_scale))
    P = torch.cat([torch.zeros_like(a[:, :, :, :1]), a.cumsum(dim=3)], dim=3)  # (B, H, n_groups, G+1, 1|K)
    read = torch.cat([r, torch.zeros_like(r[:, :, :, :1])], dim=3) + P  # row G: the unscaled carry
    below = torch.arange(G + 1, device=kv.device)[:, None] > torch.arange(G, device=kv.device)[None, :]
    # decay[i, j] = exp(r_i + P_i − P_{j+1} + w_j) for j < i, as (B, H, n_groups, 1|K, G+1, G)
    # no −80 floor here: a factored chunk's update can be ~exp(+60) and must meet its true, tiny weight
    exponent = (read[:, :, :, :, None] - (P[:, :, :, 1:] - w)[:, :, :, None]).movedim(-1, 3)
    decay = torch.where(below, exponent.clamp(max=0.0).exp(), 0.0)
    if decay.shape[3] == 1:  # per head: one matrix for all K·V entries
        local = (decay[:, :, :, 0] @ kv.flatten(4)).view(B, H, n_groups, G + 1, K, V)
    else:  # per channel: one matrix per key channel
        local = (decay @ kv.transpose(3, 4)).transpose(3, 4)  # (B, H, n_groups, G+1, K, V)
    from_start = read.exp()[..., None]  # (B, H, n_groups, G+1, 1|K, 1)
    state = chunk_kv.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    groups = []
    for n in range(n_groups):  # only the carry between groups is sequential
        with_carry = local[:, :, n] + from_start[:, :, n] * state[:, :, None]
        groups.append(with_carry[:, :, :G])
        state = with_carry[:, :, G]
    return torch.cat(groups, dim=2)[:, :, :N], state
