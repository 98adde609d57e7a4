"""Sliding-window softmax attention beside a linear recurrence — LoLCATs (Zhang et al. 2024, arXiv 2410.10254),
eq. 7: the last W tokens are read by exact softmax attention, every older token by the recurrence.

For query t and window W ≥ 1 (keys s ∈ [t−W+1, t], s ≥ 0), with the mixer's own query/key q̃, k̃ (its
query/key projections after RoPE, before feature maps, gates and convolutions) and values v:
  a_ts = q̃_t·k̃_s / √K,   m_t = max_s a_ts,   e_ts = exp(a_ts − m_t),   Z_t = Σ_s e_ts,   N_t = Σ_s e_ts v_s.
The recurrence covers the keys s ≤ t−W: its state lags W tokens behind, and the query is decayed over the
window, so each older key keeps its whole decay from s to t:
  r_t = scale · (q_t ⊙ exp(Σ_{r=t−W+1}^{t} log α_r))ᵀ S_{t−W}
      = scale · Σ_{s≤t−W} q_tᵀ diag(Π_{r∈(s,t]} α_r) k_s v_sᵀ            (linear recurrence)
with S_{t−W} the state after token t−W (zero before it). The RWKV-6 form reads S_{t−1}, so its product runs
over (t−W, t−1]; its bonus term (s = t) lies inside the window. For the delta rule, S_{t−W} is the memory
after writing token t−W, decayed over the window.
Combination (what the mixer's `finish_core` then reads):
  a student whose values carry a column of ones (its normaliser: linear attention's z, xLSTM's n) shares it,
    o_t = r_t + [N_t, Z_t], and `finish_core` divides the summed numerator by the summed normaliser: eq. 7;
  any other student adds the window's softmax output, o_t = r_t + N_t / Z_t.

This module holds the tensor functions; `students.base.RecurrentMixer` wires them to the kernels and state.
Each comes as a chunked form (training path) and a plain fp32 loop (reference).
"""
from __future__ import annotations

import torch

from kernels._backend import autocast_off
from kernels.chunking import exp_floored

MASKED = float("-inf")  # every row keeps at least its own key, so its max is finite and exp(MASKED − m) = 0
BLOCK = 64  # queries per block in the banded softmax (at least W)


def sliding_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """y[:, j] = Σ_{i=j−n+1}^{j} x[:, i] (i ≥ 0) over dim 1, in blocks of n tokens: each sum is a prefix of its
    block plus a suffix of the previous one, so it adds only the terms of its own window. (A global cumsum
    minus a shifted copy would cancel two large totals and lose a small windowed sum late in a long text.)"""
    if n == 0:
        return torch.zeros_like(x)
    B, L = x.shape[:2]
    n_blocks = -(-L // n)
    rest = x.shape[2:]
    padded = torch.cat([x, x.new_zeros(B, n_blocks * n - L, *rest)], dim=1).view(B, n_blocks, n, *rest)
    prefix = padded.cumsum(2)
    suffix = padded.flip(2).cumsum(2).flip(2)  # suffix[:, b, o] = Σ_{p≥o} of block b
    after = torch.cat([suffix[:, :, 1:], suffix.new_zeros(B, n_blocks, 1, *rest)], dim=2)  # Σ_{p>o}
    previous = torch.cat([after.new_zeros(B, 1, n, *rest), after[:, :-1]], dim=1)
    return (prefix + previous).reshape(B, n_blocks * n, *rest)[:, :L]


def sliding_sum_naive(x: torch.Tensor, n: int) -> torch.Tensor:
    """`sliding_sum` as a loop over positions."""
    if n == 0:
        return torch.zeros_like(x)
    return torch.stack([x[:, max(0, j - n + 1):j + 1].sum(1) for j in range(x.shape[1])], dim=1)


def band_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int, first_valid: int,
                 block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(N (B, T, H, V), Z (B, T, H)) in fp32, both with the window's own max m_t subtracted.

    q (B, T, H, K); k, v (B, width−1+T, H, ·): the previous width−1 tokens first, of which the first
    `first_valid` do not exist (the text started less than width−1 tokens ago); query t reads keys t … t+width−1.
    Queries go in blocks of c ≥ width, each against its c+width−1 keys: O(T·(c+width)) scores, never T × T.
    """
    B, T, H, K = q.shape
    if T == 0:
        return q.new_zeros(B, 0, H, v.shape[-1], dtype=torch.float32), q.new_zeros(B, 0, H, dtype=torch.float32)
    # fp32 even under autocast: Z_t sums up to W terms and may be shared with the recurrence's normaliser.
    with autocast_off(q.device):
        return _band_softmax(q, k, v, width, first_valid, min(max(width, block), T))


def _band_softmax(q, k, v, width, first_valid, c):
    B, T, H, K = q.shape
    n_blocks, span = -(-T // c), c + width - 1
    pad = n_blocks * c - T

    def padded(x):
        return torch.cat([x.float(), x.new_zeros(B, pad, *x.shape[2:], dtype=torch.float32)], dim=1)

    queries = padded(q).view(B, n_blocks, c, H, K)
    keys, values = padded(k).unfold(1, span, c), padded(v).unfold(1, span, c)  # (B, n, H, ·, span) views
    scores = torch.einsum("bnchk,bnhks->bnhcs", queries, keys) * K ** -0.5
    i = torch.arange(c, device=q.device)[:, None]
    s = torch.arange(span, device=q.device)[None, :]
    u = (torch.arange(n_blocks, device=q.device) * c)[:, None, None] + s  # key index in k
    # Padding keys (zeros, past the text) are left unmasked: only padding queries reach them, and so every
    # row, padding included, keeps a finite max (a row of −inf would send NaN into the gradients).
    mask = (s >= i) & (s < i + width) & (u >= first_valid)  # (n, c, span)
    scores = scores.masked_fill(~mask[None, :, None], MASKED)
    weights = exp_floored(scores - scores.amax(-1, keepdim=True))  # masked entries: exp(MASKED − m) = 0
    numerator = torch.einsum("bnhcs,bnhvs->bnchv", weights, values).reshape(B, n_blocks * c, H, -1)
    normaliser = weights.sum(-1).transpose(2, 3).reshape(B, n_blocks * c, H)
    return numerator[:, :T], normaliser[:, :T]


def band_softmax_naive(q, k, v, width: int, first_valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`band_softmax` as a loop over queries in fp32: query t reads keys max(t, first_valid) … t+width−1."""
    B, T, H, K = q.shape
    q, k, v = q.float(), k.float(), v.float()
    numerators, normalisers = [], []
    for t in range(T):
        lo, hi = max(t, first_valid), t + width
        scores = torch.einsum("bhk,bshk->bhs", q[:, t], k[:, lo:hi]) * K ** -0.5
        weights = (scores - scores.amax(-1, keepdim=True)).exp()
        numerators.append(torch.einsum("bhs,bshv->bhv", weights, v[:, lo:hi]))
        normalisers.append(weights.sum(-1))
    if not T:
        return q.new_zeros(B, 0, H, v.shape[-1]), q.new_zeros(B, 0, H)
    return torch.stack(numerators, 1), torch.stack(normalisers, 1)


def band_matrix(q: torch.Tensor, k: torch.Tensor, width: int, normalise: bool) -> torch.Tensor:
    """The window part as a (B, H, T, T) matrix from the first token: e_ts in the band t−width < s ≤ t (or
    e_ts / Z_t with `normalise`), exactly 0 elsewhere."""
    T, K = q.shape[1], q.shape[-1]
    scores = torch.einsum("bthk,bshk->bhts", q.float(), k.float()) * K ** -0.5
    t = torch.arange(T, device=q.device)
    band = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - width)
    scores = scores.masked_fill(~band, MASKED)
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    return weights / weights.sum(-1, keepdim=True) if normalise else weights
