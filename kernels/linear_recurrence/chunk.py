"""Chunked parallel form of the linear recurrence (the CPU training path, differentiable by autograd).

Inside a chunk of C tokens the output is a masked matrix product (GLA, Yang et al. 2024, §3.3); across
chunks the fp32 state is carried by the only sequential part, an in-place loop with a hand-written backward.

Each chunk takes its own form, chosen from its decays (thresholds: `kernels.chunking.DENORMALS`):
- factored (GLA eq. 5): when the chunk's log decay spans at most `factor_range` in every channel,
  exp(b_t − b_s) = exp(b_t − c) · exp(c − b_s) about the chunk's midpoint c, so the scores are one plain
  masked matrix product;
- stable, for chunks that decay faster (RWKV-6 channels reach −20 per step): per-head decays use the
  exact pairwise C × C decay matrix; per-channel decays are halved recursively, each half factored about
  its own midpoint where its span allows, down to `subchunk`-token blocks built from exact pairwise
  differences, the second half reading the first through a local state. No C × C × K tensor is formed;
- without a decay (linear attention) every factor would be 1: none is formed, and the carry is a running sum.
Every exponent that is evaluated is ≤ factor_range/2, and ≤ 0 wherever the product is kept. When many
chunks would give denormal products and half-size chunks would not, the whole call runs at half the chunk
size. `chunk_forms` reports the forms a call takes by running this code under a recorder.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from kernels.chunking import (
    CHUNK,
    DENORMALS,
    chunk_view,
    exp_floored,
    from_chunks,
    masked_exp,
    scan,
    scan_backward,
    to_chunks,
)


def _exp_clamped(x: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """exp(x), with x clamped from below where its chunk does not fit (`fits` False; there x ≤ 0) at
    −DENORMALS.safe_span/2, so that a product of two such factors is never denormal: a term changes only where
    its true weight is below exp(−42) ≈ 6e-19, by at most that much. Factored chunks' exponents (≥ −60) are
    left exact."""
    lower = torch.where(fits, -DENORMALS.factor_range / 2, -DENORMALS.safe_span / 2)
    return x.clamp_(min=lower).exp_()  # in place: callers pass a fresh difference


def _span_fits(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Whether a block's log decay (from `start` before it to `end` after it, ≤ 0 steps) spans at most
    DENORMALS.factor_range in every channel; reduces all but the leading (block) dimension."""
    return (end - start).flatten(1).amin(dim=1) >= -DENORMALS.factor_range


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
        return (q @ k.transpose(-1, -2)) * masked_exp(b_query - b.transpose(-1, -2), causal)
    decay = (b_query.unsqueeze(-2) - b.unsqueeze(-3)).clamp_(DENORMALS.exp_floor, 0.0).exp_()  # (..., L, L, K), L small
    return (decay * q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * causal


def _with_bonus(scores, bonus_diag):
    """RWKV-6's bonus term q_t·(u ⊙ k_t) sits on the diagonal, which the strict mask left empty."""
    if bonus_diag is not None:
        scores.diagonal(dim1=-2, dim2=-1).add_(bonus_diag)
    return scores


class _RowDot(torch.autograd.Function):
    """Σ_k a[..., k] · b[..., k] over the last dimension. The forward is einsum's batched product (a mul-then-sum
    is ~5× slower); the backward multiplies elementwise, which gives einsum's gradients bit for bit (its batched
    products there contract a dimension of 1, one product an element) without 1 × 1 matrix products that run at
    1–5 GFLOP/s."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return torch.einsum("...k,...k->...", a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        return (grad * b if ctx.needs_input_grad[0] else None), (grad * a if ctx.needs_input_grad[1] else None)


def _halve_chunks(b: torch.Tensor) -> bool:
    """Whether to run at half the chunk size: more than DENORMALS.halve_share of the chunks span beyond
    DENORMALS.safe_span, while both halves of every chunk span within it. b: (M, C, 1|K), the inclusive
    cumulative log decay of each chunk."""
    C = b.shape[1]
    if C < 2 * DENORMALS.subchunk or C % 2:
        return False
    if (b[:, -1].amin(dim=-1) < -DENORMALS.safe_span).float().mean().item() <= DENORMALS.halve_share:
        return False
    middle = b[:, C // 2 - 1]
    widest = torch.maximum(-middle.amin(dim=-1), -(b[:, -1] - middle).amin(dim=-1)).max().item()
    return widest <= DENORMALS.safe_span


_FORMS: list[dict] = []  # open `_recording_forms` blocks, innermost last


def _note_forms(key: str, amount: float) -> None:
    """Count `amount` (chunks or tokens) under `key` for an open `chunk_forms` recorder; else nothing."""
    if _FORMS:
        _FORMS[-1][key] = _FORMS[-1].get(key, 0) + amount


@contextmanager
def _recording_forms():
    record: dict = {}
    _FORMS.append(record)
    try:
        yield record
    finally:
        _FORMS.remove(record)


@torch.no_grad()
def chunk_forms(log_decay: torch.Tensor | None, chunk_size: int = CHUNK) -> dict:
    """The forms `linear_recurrence_chunk` takes for these decays, recorded while it runs (on zero inputs
    with one value channel): its chunk size, the share of chunks factored whole and, for per-channel decays,
    of the other chunks' tokens by the size of the block that factors them (`factored_<L>`, halving down to
    `subchunk`; `pairwise` for the rest)."""
    if log_decay is None:
        return {"chunk": chunk_size, "factored_chunks": 1.0}
    g = log_decay.detach().float()
    B, T, H = g.shape[:3]
    K = g.shape[3] if g.dim() == 4 else 1
    zeros = g.new_zeros(B, T, H, K)
    with _recording_forms() as record:
        linear_recurrence_chunk(zeros, zeros, g.new_zeros(B, T, H, 1), g, chunk_size=chunk_size)
    chunk, chunks, factored = record.pop("chunk"), record.pop("chunks"), record.pop("factored_chunks")
    forms = {"chunk": chunk, "factored_chunks": factored / chunks}
    slow_tokens = (chunks - factored) * chunk
    forms.update({key: value / slow_tokens for key, value in sorted(record.items(), key=lambda kv: kv[0])
                  if key != "pairwise"})
    if K > 1 and slow_tokens:  # per-channel stable chunks end in pairwise blocks (per head: all of them)
        forms["pairwise"] = record.get("pairwise", 0) / slow_tokens
    return forms


def linear_recurrence_chunk(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False, chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    q32, k32 = q.float(), k.float()  # cast once: the gradients of every use add up in fp32, rounded once
    q_view, k_view = (chunk_view(x, N, C) for x in (q32, k32))  # (N, B, H, C, K), strided
    vc = to_chunks(v.float(), N, C)  # (N, B, H, C, V)
    strict = bonus is not None  # RWKV reads S_{t-1}: exclusive of token t's decay, bonus on the diagonal
    bonus_diag = None  # q_t·(u ⊙ k_t), RWKV-6's bonus on the diagonal
    if bonus is not None:
        bonus_diag = chunk_view(_RowDot.apply(q32 * bonus.float(), k32), N, C)
    if log_decay is None:  # no decay (linear attention): every factor below would be exp(0) = 1, so none is formed
        if _FORMS:
            _note_forms("chunk", C), _note_forms("chunks", N * B * H), _note_forms("factored_chunks", N * B * H)
        q_f, k_f = q_view.contiguous(), k_view.contiguous()
        raw = fits = update_log_scale = chunk_log_decay = read_log_scale = None  # every chunk factored, unscaled
    else:
        g = chunk_view(log_decay.float(), N, C)
        g = g if log_decay.dim() == 4 else g[..., None]  # (N, B, H, C, 1|K), strided
        b = g.cumsum(dim=3)  # inclusive log decay from the chunk start; contiguous, read straight from the view
        if _halve_chunks(b.flatten(0, 2)):
            return linear_recurrence_chunk(q, k, v, log_decay, bonus, scale, initial_state, output_final_state, C // 2)
        b_last = b[:, :, :, -1:]  # (N, B, H, 1, 1|K)
        fits = _span_fits(0.0, b_last.flatten(0, 2))  # (M,), M = N·B·H chunks
        all_fit = bool(fits.all())
        if _FORMS:
            _note_forms("chunk", C), _note_forms("chunks", fits.numel()), _note_forms("factored_chunks", fits.sum().item())
        # One pair of factors per chunk serves its scores, its state update and its state read:
        # q_t·exp(bq_t − ref_q) and k_s·exp(ref_k − b_s), about the midpoint where the chunk's span fits
        # (|exponent| ≤ DENORMALS.factor_range/2), else ref_q = 0 and ref_k = the chunk's end (exponents ≤ 0).
        mid = b_last / 2
        chunk_fits = fits.view(N, B, H, 1, 1)
        ref_q = mid if all_fit else torch.where(chunk_fits, mid, 0.0)
        ref_k = mid if all_fit else torch.where(chunk_fits, mid, b_last)
        # The factors multiply the strided chunk views and come out contiguous: the layout change costs no pass.
        if all_fit:  # every exponent within ±factor_range/2 (not 1/exp(b − c) for k: its gradient would square it)
            b_query = None  # only the stable form reads it
            q_f = (((b - mid).sub_(g) if strict else b - mid).exp_() * q_view).contiguous()
            k_f = ((mid - b).exp_() * k_view).contiguous()
        else:  # the other chunks' exponents are ≤ 0 but unbounded below: clamped
            b_query = b - g if strict else b
            q_f = (_exp_clamped(b_query - ref_q, chunk_fits) * q_view).contiguous()
            k_f = (_exp_clamped(ref_k - b, chunk_fits) * k_view).contiguous()
        raw = (q_view, k_view, b, b_query)
        # exp(b_last − b_s) k_s = exp(b_last − ref_k) k_f,s, applied to the (K × V) update so it stays unscaled;
        # q_t exp(bq_t) = exp(ref_q) q_f,t: the carry scales the state each chunk reads
        update_log_scale, chunk_log_decay, read_log_scale = b_last - ref_k, b_last.squeeze(3), ref_q.squeeze(3)
    o = _intra_chunk(q_f, k_f, vc, raw, fits, strict, bonus_diag)  # (M, C, V)
    chunk_kv = k_f.transpose(-1, -2) @ vc  # (N, B, H, K, V)
    if update_log_scale is not None:
        chunk_kv.mul_(update_log_scale.exp().transpose(-1, -2))
    states_read, state = _carry_states(chunk_kv, chunk_log_decay, read_log_scale, initial_state)
    # o + q S in one call accumulating in place (out of place would first copy o); scaled on the way out
    o = o.baddbmm_(q_f.flatten(0, 2), states_read.flatten(0, 2))
    return from_chunks(o.view(N, B, H, C, -1), T, scale, out_dtype), (state if output_final_state else None)


def _intra_chunk(q_f, k_f, vc, raw, fits, strict, bonus_diag):
    """Σ_{s ≤ t in the chunk} (q_t · exp(bq_t − b_s) ⊙ k_s) v_s for every chunk (M, C, V), each in its own form.

    The factored product runs on every chunk (the factors of chunks that do not fit have exponents ≤ 0, so
    their wrong but finite rows are simply overwritten); the chunks that do not fit are rebuilt stably from
    the raw q, k and decays on their own subset, and copied over (index_copy passes them no gradient).
    `fits` None (no decay): every chunk is factored, and `raw` is not read.
    """
    flat = lambda x: x.flatten(0, 2)
    diag = None if bonus_diag is None else flat(bonus_diag)
    bonus_of = (lambda d: d) if strict else (lambda d: None)
    slow = None if fits is None or bool(fits.all()) else (~fits).nonzero().squeeze(1)
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

    Each half is factored about its own midpoint where its span fits, else halved again, down to DENORMALS.subchunk
    tokens built from exact pairwise differences; the second half reads the first through one local state
    S = Σ_{s ∈ first} exp(e − b_s) k_s v_sᵀ, as (q_t ⊙ exp(bq_t − e)) S, e the log decay at the split
    (every exponent ≤ 0). No (L × L × K) tensor is formed above DENORMALS.subchunk tokens.
    """
    L = q.shape[1]
    if L <= DENORMALS.subchunk:
        _note_forms("pairwise", q.shape[0] * L)
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
        fits = _span_fits(start, b[:, -1:])
        if _FORMS:
            _note_forms(f"factored_{q.shape[1]}", fits.sum().item() * q.shape[1])
        return _by_form(fits, (q, k, v, b, bq, start, diag), factored, split)

    first = half(q[:, :h], k[:, :h], v[:, :h], b[:, :h], b_query[:, :h], start,
                 None if bonus_diag is None else bonus_diag[:, :h])
    second = half(q[:, h:], k[:, h:], v[:, h:], b[:, h:], b_query[:, h:], e,
                  None if bonus_diag is None else bonus_diag[:, h:])
    first_state = (k[:, :h] * exp_floored(e - b[:, :h])).transpose(-1, -2) @ v[:, :h]  # (M, K, V)
    second = second.baddbmm_(q[:, h:] * exp_floored(b_query[:, h:] - e), first_state)
    return torch.cat([first, second], dim=1)


def _carry_states(chunk_kv, chunk_log_decay, read_log_scale, initial_state):
    """States read by each chunk, exp(r_n) ⊙ S_n, and the final state, for S_{n+1} = exp(a_n) ⊙ S_n + chunk_kv_n.

    chunk_kv: (N, B, H, K, V); a_n (chunk log decays) and r_n (read scales): (N, B, H, 1|K), both ≤ 0, or both
    None for no decay (S_{n+1} = S_n + chunk_kv_n, read as is).
    """
    N, B, H, K, V = chunk_kv.shape
    decay = None if chunk_log_decay is None else exp_floored(chunk_log_decay)[..., None]  # (N, B, H, 1|K, 1)
    state = chunk_kv.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states = _ChunkCarry.apply(chunk_kv, decay, state)  # (N+1, B, H, K, V)
    if read_log_scale is None:
        return states[:N], states[N]
    return states[:N] * exp_floored(read_log_scale)[..., None], states[N]


def _carry_step(decays):
    """The carry's step, in place into `out`: kv + d_n ⊙ s, or kv + s without decays (also the backward's step)."""
    if decays is None:
        return lambda kv, n, s, out: torch.add(kv, s, out=out)
    return lambda kv, n, s, out: torch.addcmul(kv, decays[n], s, out=out)


class _ChunkCarry(torch.autograd.Function):
    """S_{n+1} = d_n ⊙ S_n + kv_n over chunks (d_n = 1 where `decay` is None). Backward: dS_n = G_n + d_n ⊙ dS_{n+1},
    d kv_n = dS_{n+1}, d d_n = Σ dS_{n+1} ⊙ S_n over the broadcast dims."""

    @staticmethod
    def forward(ctx, chunk_kv, decay, initial_state):
        states = scan(chunk_kv, initial_state, _carry_step(None if decay is None else decay.unbind(0)))
        ctx.save_for_backward(decay, states)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        decay, states = ctx.saved_tensors
        grad_kv, grad_initial = scan_backward(grad_states, _carry_step(None if decay is None else decay.unbind(0)))
        grad_decay = None
        if decay is not None and ctx.needs_input_grad[1]:  # a learned decay (RetNet's is fixed: no gradient to form)
            # Σ dS_{n+1} ⊙ S_n over V (one batched product), and over K too per head (the decay is shared by all
            # K·V entries; there a product and a sum, as einsum's (1 × K·V)(K·V × 1) products run ~3.5× slower)
            if decay.shape[-2] > 1:
                grad_decay = torch.einsum("...kv,...kv->...k", grad_kv, states[:-1]).view(decay.shape)
            else:
                grad_decay = (grad_kv * states[:-1]).sum((-2, -1)).view(decay.shape)
        return grad_kv, grad_decay, grad_initial
