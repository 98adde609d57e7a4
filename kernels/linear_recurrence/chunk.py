"""Chunked parallel form of the linear recurrence (the CPU training path, differentiable by autograd).

Inside a chunk of C tokens the output is a masked matrix product (GLA, Yang et al. 2024, §3.3); across
chunks the fp32 state is carried by the only sequential part, an in-place loop with a hand-written backward.

Each chunk takes its own form, chosen from its decays:
- factored (GLA eq. 5): when the chunk's log decay spans at most FACTOR_RANGE in every channel,
  exp(b_t − b_s) = exp(b_t − c) · exp(c − b_s) about the chunk's midpoint c, each factor within
  exp(±FACTOR_RANGE/2) ≈ 1e±26, so the scores are one plain masked matrix product;
- stable, for chunks that decay faster (RWKV-6 channels reach −20 per step): per-head decays use the
  exact pairwise C × C decay matrix; per-channel decays are halved recursively, each half factored about
  its own midpoint where its span allows, down to SUBCHUNK-token blocks built from exact pairwise
  differences, the second half reading the first through a local state. No C × C × K tensor is formed.
Every exponent that is evaluated is ≤ FACTOR_RANGE/2, and ≤ 0 wherever the product is kept. Factored
chunks spanning beyond DENORMAL_SAFE_SPAN can give denormal products (slow, not wrong); when many do and
half-size chunks would not, the whole call runs at half the chunk size.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

CHUNK = 64
SUBCHUNK = 8
# Largest log-decay span that is factored: factors within exp(±60), normal fp32 numbers. A query factor up to
# exp(60) meets a state read scaled down to exp(−60 + decay): only contributions below exp(−27) can underflow.
FACTOR_RANGE = 120.0
# Beyond this span a product of two factors can fall below fp32's normal range (exp(−87)), and every denormal
# operand takes the matmul ~100× off its fast path: chunks spanning 88–92 ran the forward 1.6–2.4× slower.
# When more than DENORMAL_SHARE of the chunks span beyond it and every half-chunk spans within it, the call
# runs at half the chunk size instead (measured on clean decays: forward 1–31%, forward+backward 14–35% dearer
# than 64-token chunks, against 1.6–5× for the denormals).
DENORMAL_SAFE_SPAN = 84.0
DENORMAL_SHARE = 1 / 8


def _chunk_view(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, H, ...) -> (N, B, H, C, ...) view, zero padded at the end (a copy only when padding)."""
    pad = n_chunks * chunk - x.shape[1]
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, 0, 0, pad])
    return x.unflatten(1, (n_chunks, chunk)).permute(1, 0, 3, 2, *range(4, x.dim() + 1))


def _to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, H, ...) -> contiguous (N, B, H, C, ...): chunk-major, so each chunk's slice of the carried
    states is one contiguous block."""
    return _chunk_view(x, n_chunks, chunk).contiguous()


def _from_chunks(o: torch.Tensor, length: int, scale: float = 1.0, dtype: torch.dtype | None = None):
    """scale · o, (N, B, H, C, V) -> contiguous (B, T, H, V) in `dtype`, dropping the padding."""
    return _FromChunks.apply(o, length, scale, dtype or o.dtype)


class _FromChunks(torch.autograd.Function):
    """The output's layout change, with the attention scale and the cast riding on the same pass each way.
    Its backward hands on a contiguous chunk-layout gradient: autograd's own permute backward passes a
    strided view, and the batched products that read it then loop per matrix."""

    @staticmethod
    def forward(ctx, o, length, scale, dtype):
        N, B, H, C, V = o.shape
        ctx.chunks, ctx.scale = (N, C), scale
        out = o.new_empty(B, N * C, H, V, dtype=dtype)
        torch.mul(o.permute(1, 0, 3, 2, 4), scale, out=out.view(B, N, C, H, V))
        return out if length == N * C else out[:, :length].contiguous()

    @staticmethod
    def backward(ctx, grad):
        N, C = ctx.chunks
        grad = _chunk_view(grad, N, C)
        out = torch.empty(grad.shape, dtype=torch.float32, device=grad.device)
        return torch.mul(grad, ctx.scale, out=out), None, None, None


def _exp_floored(x: torch.Tensor, floor: float = -80.0) -> torch.Tensor:
    """exp(x), with 0 below `floor`: exp would be (near) denormal there, and every product with it ~100× slower
    (anything it meets is at most exp(+60), so the dropped terms are below exp(−20))."""
    return F.threshold(x, floor, float("-inf")).exp_()  # exp(−inf) = 0 exactly, and its gradient 0


def _exp_clamped(x: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """exp(x), with x clamped from below where its chunk does not fit (`fits` False; there x ≤ 0) at
    −DENORMAL_SAFE_SPAN/2, so that a product of two such factors is never denormal: a term changes only where
    its true weight is below exp(−42) ≈ 6e-19, by at most that much. Factored chunks' exponents (≥ −60) are
    left exact."""
    lower = torch.where(fits, -FACTOR_RANGE / 2, -DENORMAL_SAFE_SPAN / 2)
    return x.clamp_(min=lower).exp_()  # in place: callers pass a fresh difference


def _masked_exp(diff: torch.Tensor, mask: torch.Tensor, floor: float = -80.0) -> torch.Tensor:
    """exp(diff) where mask (there diff ≤ 0), else 0."""
    return torch.where(mask, _exp_floored(diff.clamp(max=0.0), floor), 0.0)


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


def _halve_chunks(b: torch.Tensor) -> bool:
    """Whether to run at half the chunk size: more than DENORMAL_SHARE of the chunks span beyond
    DENORMAL_SAFE_SPAN, while both halves of every chunk span within it. b: (M, C, 1|K), the inclusive
    cumulative log decay of each chunk."""
    C = b.shape[1]
    if C < 2 * SUBCHUNK or C % 2:
        return False
    if (b[:, -1].amin(dim=-1) < -DENORMAL_SAFE_SPAN).float().mean().item() <= DENORMAL_SHARE:
        return False
    middle = b[:, C // 2 - 1]
    widest = torch.maximum(-middle.amin(dim=-1), -(b[:, -1] - middle).amin(dim=-1)).max().item()
    return widest <= DENORMAL_SAFE_SPAN


def chunk_forms(log_decay: torch.Tensor | None, chunk_size: int = CHUNK) -> dict:
    """The forms `chunk` takes: its chunk size (halved while its rule for denormal-prone spans says so), the
    share of chunks factored whole and, for per-channel decays, of the other chunks' tokens by the size of
    the block that factors them (halving down to SUBCHUNK; `pairwise` for the rest)."""
    if log_decay is None:
        return {"chunk": chunk_size, "factored_chunks": 1.0}
    g = log_decay.detach().float()
    g = g if g.dim() == 4 else g[..., None]
    B, T, H, K = g.shape
    while True:
        N = max(1, -(-T // chunk_size))
        b = _to_chunks(g, N, chunk_size).cumsum(dim=3).flatten(0, 2)  # (M, C, K)
        if not _halve_chunks(b):
            break
        chunk_size //= 2
    fits = _span_fits(torch.zeros_like(b[:, :1]), b[:, -1:])
    forms = {"chunk": chunk_size, "factored_chunks": fits.float().mean().item()}
    if K == 1 or bool(fits.all()):
        return forms
    blocks = b[~fits]
    starts = torch.zeros_like(blocks[:, :1])
    total = blocks.shape[0] * chunk_size
    while blocks.shape[1] > SUBCHUNK and blocks.shape[0]:
        L = blocks.shape[1] // 2
        starts = torch.stack([starts, blocks[:, L - 1:L]], dim=1).flatten(0, 1)
        blocks = blocks.reshape(-1, L, K)
        fit = _span_fits(starts, blocks[:, -1:])
        forms[f"factored_{L}"] = fit.sum().item() * L / total
        blocks, starts = blocks[~fit], starts[~fit]
    forms["pairwise"] = blocks.shape[0] * blocks.shape[1] / total
    return forms


def linear_recurrence_chunk(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False, chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    q_view, k_view = (_chunk_view(x.float(), N, C) for x in (q, k))  # (N, B, H, C, K), strided
    vc = _to_chunks(v.float(), N, C)  # (N, B, H, C, V)
    strict = bonus is not None  # RWKV reads S_{t-1}: exclusive of token t's decay, bonus on the diagonal
    if log_decay is None:
        g = vc.new_zeros(N, B, H, C, 1)
    else:
        g = _chunk_view(log_decay.float(), N, C)
        g = g if log_decay.dim() == 4 else g[..., None]  # (N, B, H, C, 1|K), strided
    b = g.cumsum(dim=3)  # inclusive log decay from the chunk start; contiguous, read straight from the view
    if log_decay is not None and _halve_chunks(b.flatten(0, 2)):
        return linear_recurrence_chunk(q, k, v, log_decay, bonus, scale, initial_state, output_final_state, C // 2)
    b_last = b[:, :, :, -1:]  # (N, B, H, 1, 1|K)
    fits = _span_fits(0.0, b_last.flatten(0, 2))  # (M,), M = N·B·H chunks
    all_fit = bool(fits.all())
    # One pair of factors per chunk serves its scores, its state update and its state read:
    # q_t·exp(bq_t − ref_q) and k_s·exp(ref_k − b_s), about the midpoint where the chunk's span fits
    # (|exponent| ≤ FACTOR_RANGE/2), else ref_q = 0 and ref_k = the chunk's end (exponents ≤ 0).
    mid = b_last / 2
    chunk_fits = fits.view(N, B, H, 1, 1)
    ref_q = mid if all_fit else torch.where(chunk_fits, mid, 0.0)
    ref_k = mid if all_fit else torch.where(chunk_fits, mid, b_last)
    # The factors multiply the strided chunk views and come out contiguous: the layout change costs no pass.
    if all_fit:  # every exponent within ±FACTOR_RANGE/2 (not 1/exp(b − c) for k: its gradient would square it)
        b_query = None  # only the stable form reads it
        q_f = (((b - mid).sub_(g) if strict else b - mid).exp_() * q_view).contiguous()
        k_f = ((mid - b).exp_() * k_view).contiguous()
    else:  # the other chunks' exponents are ≤ 0 but unbounded below: clamped
        b_query = b - g if strict else b
        q_f = (_exp_clamped(b_query - ref_q, chunk_fits) * q_view).contiguous()
        k_f = (_exp_clamped(ref_k - b, chunk_fits) * k_view).contiguous()
    bonus_diag = None  # q_t·(u ⊙ k_t) as a batched product in the input layout (a mul-then-sum is ~5× slower)
    if bonus is not None:
        bonus_diag = _chunk_view(torch.einsum("bthk,bthk->bth", q.float() * bonus.float(), k.float()), N, C)
    o = _intra_chunk(q_f, k_f, vc, (q_view, k_view, b, b_query), fits, strict, bonus_diag)  # (M, C, V)
    # exp(b_last − b_s) k_s = exp(b_last − ref_k) k_f,s, applied to the (K × V) update so it stays unscaled;
    # q_t exp(bq_t) = exp(ref_q) q_f,t: the carry scales the state each chunk reads
    chunk_kv = (k_f.transpose(-1, -2) @ vc).mul_((b_last - ref_k).exp().transpose(-1, -2))  # (N, B, H, K, V)
    states_read, state = _carry_states(chunk_kv, b_last.squeeze(3), ref_q.squeeze(3), initial_state)
    # o + q S in one call accumulating in place (out of place would first copy o); scaled on the way out
    o = o.baddbmm_(q_f.flatten(0, 2), states_read.flatten(0, 2))
    return _from_chunks(o.view(N, B, H, C, -1), T, scale, out_dtype), (state if output_final_state else None)


def _intra_chunk(q_f, k_f, vc, raw, fits, strict, bonus_diag):
    """Σ_{s ≤ t in the chunk} (q_t · exp(bq_t − b_s) ⊙ k_s) v_s for every chunk (M, C, V), each in its own form.

    The factored product runs on every chunk (the factors of chunks that do not fit have exponents ≤ 0, so
    their wrong but finite rows are simply overwritten); the chunks that do not fit are rebuilt stably from
    the raw q, k and decays on their own subset, and copied over (index_copy passes them no gradient).
    """
    flat = lambda x: x.flatten(0, 2)
    diag = None if bonus_diag is None else flat(bonus_diag)
    bonus_of = (lambda d: d) if strict else (lambda d: None)
    slow = None if bool(fits.all()) else (~fits).nonzero().squeeze(1)
    if slow is not None and slow.numel() == fits.numel():
        factored = None
    else:
        scores = (flat(q_f) @ flat(k_f).transpose(-1, -2)).tril_(-1 if strict else 0)
        factored = _with_bonus(scores, bonus_of(diag)) @ flat(vc)
    if slow is None:
        return factored
    if factored is None:  # every chunk slow: all of them, flattened
        q, k, b, b_query, v = (flat(x) for x in raw + (vc,))
    else:  # gather the slow chunks only (flattening the strided views first would copy them whole)
        where = torch.unravel_index(slow, q_f.shape[:3])
        q, k, b, b_query, v = (x[where] for x in raw + (vc,))
        diag = None if diag is None else diag[slow]
    if b.shape[-1] == 1:
        stable = _with_bonus(_pairwise_scores(q, k, b_query, b, strict), bonus_of(diag)) @ v
    else:
        stable = _per_channel_halves(q, k, v, b, b_query, torch.zeros_like(b[:, :1]), strict, bonus_of(diag))
    return stable if factored is None else factored.index_copy_(0, slow, stable)  # fresh: in place is safe


def _per_channel_halves(q, k, v, b, b_query, start, strict, bonus_diag):
    """Intra-block output of fast-decaying blocks (M, L, ·) with per-channel decays, by recursive halving.

    Each half is factored about its own midpoint where its span fits, else halved again, down to SUBCHUNK
    tokens built from exact pairwise differences; the second half reads the first through one local state
    S = Σ_{s ∈ first} exp(e − b_s) k_s v_sᵀ, as (q_t ⊙ exp(bq_t − e)) S, e the log decay at the split
    (every exponent ≤ 0). No (L × L × K) tensor is formed above SUBCHUNK tokens.
    """
    L = q.shape[1]
    if L <= SUBCHUNK:
        return _with_bonus(_pairwise_scores(q, k, b_query, b, strict), bonus_diag) @ v
    h = L // 2
    e = b[:, h - 1:h]  # (M, 1, K): log decay at the end of the first half

    def half(q, k, v, b, bq, start, diag):
        def factored(q, k, v, b, bq, start, diag):
            scores = _factored_scores(q, k, bq, b, start, b[:, -1:], strict)
            return _with_bonus(scores, diag if strict else None) @ v

        def split(q, k, v, b, bq, start, diag):
            return _per_channel_halves(q, k, v, b, bq, start, strict, diag if strict else None)

        diag = q.new_zeros(q.shape[:2]) if diag is None else diag
        return _by_form(_span_fits(start, b[:, -1:]), (q, k, v, b, bq, start, diag), factored, split)

    first = half(q[:, :h], k[:, :h], v[:, :h], b[:, :h], b_query[:, :h], start,
                 None if bonus_diag is None else bonus_diag[:, :h])
    second = half(q[:, h:], k[:, h:], v[:, h:], b[:, h:], b_query[:, h:], e,
                  None if bonus_diag is None else bonus_diag[:, h:])
    first_state = (k[:, :h] * _exp_floored(e - b[:, :h])).transpose(-1, -2) @ v[:, :h]  # (M, K, V)
    second = second.baddbmm_(q[:, h:] * _exp_floored(b_query[:, h:] - e), first_state)
    return torch.cat([first, second], dim=1)


def _carry_states(chunk_kv, chunk_log_decay, read_log_scale, initial_state):
    """States read by each chunk, exp(r_n) ⊙ S_n, and the final state, for S_{n+1} = exp(a_n) ⊙ S_n + chunk_kv_n.

    chunk_kv: (N, B, H, K, V); a_n (chunk log decays) and r_n (read scales): (N, B, H, 1|K), both ≤ 0.
    """
    N, B, H, K, V = chunk_kv.shape
    decay = _exp_floored(chunk_log_decay)[..., None]  # (N, B, H, 1|K, 1)
    state = chunk_kv.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states = _ChunkCarry.apply(chunk_kv, decay, state)  # (N+1, B, H, K, V)
    return states[:N] * _exp_floored(read_log_scale)[..., None], states[N]


def _scan(chunk_kv, initial_state, step):
    """S_0 = initial_state, S_{n+1} = step(kv_n, n, S_n, out): the chunks' only sequential part, one in-place loop
    over contiguous chunk slices (autograd through a Python loop would record a graph node per chunk).
    Returns the states (N+1, ...)."""
    states = chunk_kv.new_empty((chunk_kv.shape[0] + 1,) + chunk_kv.shape[1:])
    states[0] = initial_state
    state_of = states.unbind(0)  # views made once: the loop body is the one product per chunk
    for n, kv in enumerate(chunk_kv.unbind(0)):
        step(kv, n, state_of[n], state_of[n + 1])
    return states


def _scan_backward(grad_states, step):
    """The gradient of `_scan` for a step linear in S: dS_n = G_n + step_backᵀ(dS_{n+1}), written as
    step(G_n, n, dS_{n+1}, out). Returns d kv (= dS_{n+1} per chunk, filled in place) and dS_0."""
    N = grad_states.shape[0] - 1
    grad_states = grad_states.contiguous()
    grad_kv = torch.empty_like(grad_states[1:])
    grad_kv[N - 1] = grad_states[N]
    grad_of, given = grad_kv.unbind(0), grad_states.unbind(0)
    for n in range(N - 1, 0, -1):
        step(given[n], n, grad_of[n], grad_of[n - 1])
    return grad_kv, step(given[0], 0, grad_of[0], None)


class _ChunkCarry(torch.autograd.Function):
    """S_{n+1} = d_n ⊙ S_n + kv_n over chunks. Backward: dS_n = G_n + d_n ⊙ dS_{n+1}, d kv_n = dS_{n+1},
    d d_n = Σ dS_{n+1} ⊙ S_n over the broadcast dims."""

    @staticmethod
    def forward(ctx, chunk_kv, decay, initial_state):
        decays = decay.unbind(0)
        states = _scan(chunk_kv, initial_state, lambda kv, n, s, out: torch.addcmul(kv, decays[n], s, out=out))
        ctx.save_for_backward(decay, states)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        decay, states = ctx.saved_tensors
        decays = decay.unbind(0)
        grad_kv, grad_initial = _scan_backward(
            grad_states, lambda g, n, s, out: torch.addcmul(g, decays[n], s, out=out))
        # Σ dS_{n+1} ⊙ S_n over V, and over K too per head (the decay is shared by all K·V entries), for all
        # chunks in one batched product
        grad_decay = torch.einsum("...kv,...kv->...k" if decay.shape[-2] > 1 else "...kv,...kv->...",
                                  grad_kv, states[:-1]).view(decay.shape)
        return grad_kv, grad_decay, grad_initial
