"""Triton kernels for the linear recurrence: chunked forward and backward (the CUDA training path).

S_t = diag(exp(g_t)) S_{t−1} + k_t v_tᵀ, o_t = S_tᵀ q_t (GLA, Yang et al. 2024, arXiv 2312.06635, §4). Inside a
chunk the output is a masked matrix product; across chunks the fp32 state is carried. Two schedules share the
per-chunk math (the `_chunk_*` helpers):
- sequential ("fused chunk"): one program per (batch·head, value tile) walks the chunks in order and keeps
  the state S (K × BV) in registers;
- chunk_parallel (fla's three phases): (a) every chunk's own state contribution Σ_s exp(b_last − b_s) k_s v_sᵀ,
  one program per chunk; (b) a short scan over chunks, S_{n+1} = exp(b_last,n) ⊙ S_n + contribution_n, that
  leaves each chunk's incoming state in memory; (c) every chunk's output from its incoming state, one
  program per chunk. It fills the device when B·H·(V / BV) programs alone would not.
Decays enter only as differences of chunk-local cumulative log decays, so every exponent is ≤ 0:
- none / per head: chunks of 64, intra-chunk weights exp(b_t − b_s) on a (C × C) tile;
- per key channel: chunks of 16, the intra-chunk scores summed column by column from pairwise
  differences (exact for RWKV-6's −20 per step), the state carried with exp(b_last − b_s).
Backward: dq needs the state entering each chunk, dk and dv the gradient dS of the state leaving it
(carried backwards: dS ← exp(b_last) ⊙ dS + Σ_t exp(bq_t) q_t do_tᵀ); sequentially that is one forward and one
reverse sweep, chunk-parallel the same scan in both directions and one program per chunk. The decay gradient
needs no kernel: with B the cumulative log decay, ∂L/∂B_t = q_t ⊙ dq_t − k_t ⊙ dk_t (query term at t − 1 in the
RWKV form) plus dS_T ⊙ S_T at the end, and ∂L/∂g_t = Σ_{r ≥ t} ∂L/∂B_r. The scale and RWKV's bonus term are
plain torch around the kernels. Nothing here reads a tensor's value on the host: no synchronisation.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

CHUNK_PER_HEAD = 64
CHUNK_PER_CHANNEL = 16
MAX_VALUE_TILE = 64
# schedule="auto" on CUDA: the sequential schedule runs B·H·(V / BV) programs, each walking every chunk; below
# this many programs per streaming multiprocessor most of the device idles, and the chunk-parallel schedule
# (one program per chunk, plus a scan of N short steps) is used instead.
SEQUENTIAL_MIN_PROGRAMS_PER_SM = 2
SCHEDULES = ("auto", "sequential", "chunk_parallel")


@triton.jit
def _dot(a, b, LOW_PRECISION: tl.constexpr):
    """fp32 inputs stay fp32 (no TF32); 16-bit inputs multiply in bf16 with fp32 accumulation."""
    if LOW_PRECISION:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _tile(x, token, cols, mask_t, mask_c, D: tl.constexpr):
    """Rows `token` × columns `cols` of a (tokens, D) matrix in fp32, zero outside the masks."""
    return tl.load(x + token[:, None] * D + cols[None, :], mask=mask_t[:, None] & mask_c[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _frame(start, rows, i_b, i_h, T, H: tl.constexpr, C: tl.constexpr):
    """The chunk starting at `start`: which rows are tokens, their (b, t, h) indices and the last token's."""
    t = start + rows
    mask_t = t < T
    token = (i_b * T + t) * H + i_h
    last = (i_b * T + tl.minimum(start + C, T) - 1) * H + i_h
    return mask_t, token, last


@triton.jit
def _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H: tl.constexpr, K: tl.constexpr,
                  DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr):
    """A chunk's local cumulative log decays: keys' b_s, queries' (b_{t−1} in the RWKV form) and the last."""
    if DECAY == 0:  # unused: no decay
        bc, bq, b_last = 0.0, 0.0, 0.0
    elif DECAY == 1:
        bc = tl.load(b + token, mask=mask_t, other=0.0)
        bq = tl.load(b + token - H, mask=mask_t & (rows > 0), other=0.0) if EXCLUSIVE else bc
        b_last = tl.load(b + last)
    else:
        bc = tl.load(b + token[:, None] * K + cols_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0)
        if EXCLUSIVE:
            bq = tl.load(b + (token - H)[:, None] * K + cols_k[None, :],
                         mask=(mask_t & (rows > 0))[:, None] & mask_k[None, :], other=0.0)
        else:
            bq = bc
        b_last = tl.load(b + last * K + cols_k, mask=mask_k, other=0.0)
    return bc, bq, b_last


@triton.jit
def _chunk_kv(kc, vc, bc, b_last, DECAY: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """The chunk's own contribution to the state leaving it: Σ_s exp(b_last − b_s) k_s v_sᵀ (K × BV)."""
    if DECAY == 0:
        kv = _dot(tl.trans(kc), vc, LOW_PRECISION)
    elif DECAY == 1:
        kv = _dot(tl.trans(kc * tl.exp(b_last - bc)[:, None]), vc, LOW_PRECISION)
    else:
        kv = _dot(tl.trans(kc * tl.exp(b_last[None, :] - bc)), vc, LOW_PRECISION)
    return kv


@triton.jit
def _chunk_qdo(qc, doc, bq, DECAY: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """The chunk's own contribution to the gradient of the state entering it: Σ_t exp(bq_t) q_t do_tᵀ."""
    if DECAY == 0:
        qdo = _dot(tl.trans(qc), doc, LOW_PRECISION)
    elif DECAY == 1:
        qdo = _dot(tl.trans(qc * tl.exp(bq)[:, None]), doc, LOW_PRECISION)
    else:
        qdo = _dot(tl.trans(qc * tl.exp(bq)), doc, LOW_PRECISION)
    return qdo


@triton.jit
def _decayed(S, b_last, DECAY: tl.constexpr):
    """exp(b_last) ⊙ S: the state (or its gradient) carried across a whole chunk."""
    if DECAY == 1:
        S = S * tl.exp(b_last)
    elif DECAY == 2:
        S = S * tl.exp(b_last)[:, None]
    return S


@triton.jit
def _chunk_output(S, qc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v, mask_v,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                  DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """A chunk's outputs (C × BV): Σ_{s ≤ t in the chunk} (q_t · exp(bq_t − b_s) ⊙ k_s) v_s (s < t in the RWKV form)
    plus exp(bq_t) ⊙ q_t read through S, the state entering the chunk."""
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    if DECAY == 0:
        oc = _dot(tl.where(causal, _dot(qc, tl.trans(kc), LOW_PRECISION), 0.0), vc, LOW_PRECISION)
        oc += _dot(qc, S, LOW_PRECISION)
    elif DECAY == 1:
        live = causal & mask_t[:, None]  # padded query rows must not exponentiate b_s > 0 differences
        weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
        oc = _dot(_dot(qc, tl.trans(kc), LOW_PRECISION) * weight, vc, LOW_PRECISION)
        oc += _dot(qc, S, LOW_PRECISION) * tl.exp(bq)[:, None]
    else:
        oc = _dot(qc * tl.exp(bq), S, LOW_PRECISION)
        for j in range(C):  # column j of the intra-chunk scores, exact pairwise decays
            token_j = (i_b * T + start + j) * H + i_h
            valid_j = (start + j + tl.zeros([1], dtype=tl.int32)) < T
            k_j = tl.load(k + token_j * K + cols_k, mask=mask_k & valid_j, other=0.0).to(tl.float32)
            b_j = tl.load(b + token_j * K + cols_k, mask=mask_k & valid_j, other=0.0)
            v_j = tl.load(v + token_j * V + cols_v, mask=mask_v & valid_j, other=0.0).to(tl.float32)
            seen = (rows > j) if EXCLUSIVE else (rows >= j)
            decay = tl.exp(tl.where(seen[:, None] & mask_t[:, None], bq - b_j[None, :], float("-inf")))
            score = tl.sum(qc * k_j[None, :] * decay, axis=1)
            oc += score[:, None] * v_j[None, :]
    return oc


@triton.jit
def _chunk_dq(S, doc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v, mask_v,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
              DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """A chunk's dq (C × BK, this value tile's part): Σ_{s ≤ t} (do_t · v_s) exp(bq_t − b_s) ⊙ k_s plus
    exp(bq_t) ⊙ S do_t, S the state entering the chunk."""
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    if DECAY == 0:
        dqc = _dot(tl.where(causal, _dot(doc, tl.trans(vc), LOW_PRECISION), 0.0), kc, LOW_PRECISION)
        dqc += _dot(doc, tl.trans(S), LOW_PRECISION)
    elif DECAY == 1:
        live = causal & mask_t[:, None]
        weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
        dqc = _dot(_dot(doc, tl.trans(vc), LOW_PRECISION) * weight, kc, LOW_PRECISION)
        dqc += _dot(doc, tl.trans(S), LOW_PRECISION) * tl.exp(bq)[:, None]
    else:
        dqc = _dot(doc, tl.trans(S), LOW_PRECISION) * tl.exp(bq)
        for j in range(C):
            token_j = (i_b * T + start + j) * H + i_h
            valid_j = (start + j + tl.zeros([1], dtype=tl.int32)) < T
            k_j = tl.load(k + token_j * K + cols_k, mask=mask_k & valid_j, other=0.0).to(tl.float32)
            b_j = tl.load(b + token_j * K + cols_k, mask=mask_k & valid_j, other=0.0)
            v_j = tl.load(v + token_j * V + cols_v, mask=mask_v & valid_j, other=0.0).to(tl.float32)
            seen = (rows > j) if EXCLUSIVE else (rows >= j)
            decay = tl.exp(tl.where(seen[:, None] & mask_t[:, None], bq - b_j[None, :], float("-inf")))
            dqc += tl.sum(doc * v_j[None, :], axis=1)[:, None] * k_j[None, :] * decay
    return dqc


@triton.jit
def _chunk_dkv(dS, qc, kc, vc, doc, bc, bq, b_last, q, do, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k,
               cols_v, mask_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
               DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """A chunk's dk (this value tile's part) and dv: every query t ≥ s of the chunk reading key s, plus dS (the
    gradient of the state leaving the chunk) reaching k_s, v_s through exp(b_last − b_s) k_s v_sᵀ."""
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    if DECAY == 0:
        scores = tl.where(causal, _dot(qc, tl.trans(kc), LOW_PRECISION), 0.0)  # [t, s]
        dscores = tl.where(causal, _dot(doc, tl.trans(vc), LOW_PRECISION), 0.0)
        dvc = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc, dS, LOW_PRECISION)
        dkc = _dot(tl.trans(dscores), qc, LOW_PRECISION) + _dot(vc, tl.trans(dS), LOW_PRECISION)
    elif DECAY == 1:
        live = causal & mask_t[:, None]
        weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
        to_end = tl.exp(b_last - bc)[:, None]
        scores = _dot(qc, tl.trans(kc), LOW_PRECISION) * weight
        dscores = _dot(doc, tl.trans(vc), LOW_PRECISION) * weight
        dvc = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc * to_end, dS, LOW_PRECISION)
        dkc = _dot(tl.trans(dscores), qc, LOW_PRECISION) + _dot(vc, tl.trans(dS), LOW_PRECISION) * to_end
    else:
        to_end = tl.exp(b_last[None, :] - bc)
        dvc = _dot(kc * to_end, dS, LOW_PRECISION)
        dkc = _dot(vc, tl.trans(dS), LOW_PRECISION) * to_end
        for i in range(C):  # query row i reaches every key s ≤ i of the chunk
            token_i = (i_b * T + start + i) * H + i_h
            valid_i = (start + i + tl.zeros([1], dtype=tl.int32)) < T
            q_i = tl.load(q + token_i * K + cols_k, mask=mask_k & valid_i, other=0.0).to(tl.float32)
            do_i = tl.load(do + token_i * V + cols_v, mask=mask_v & valid_i, other=0.0).to(tl.float32)
            if EXCLUSIVE:
                bq_i = tl.load(b + (token_i - H) * K + cols_k,
                               mask=mask_k & valid_i & (i + tl.zeros([1], dtype=tl.int32) > 0), other=0.0)
            else:
                bq_i = tl.load(b + token_i * K + cols_k, mask=mask_k & valid_i, other=0.0)
            seen = ((rows < i) if EXCLUSIVE else (rows <= i)) & valid_i
            decay = tl.exp(tl.where(seen[:, None], bq_i[None, :] - bc, float("-inf")))  # [s, c]
            qd = q_i[None, :] * decay
            dvc += tl.sum(kc * qd, axis=1)[:, None] * do_i[None, :]
            dkc += tl.sum(vc * do_i[None, :], axis=1)[:, None] * qd
    return dkc, dvc


# ---- sequential schedule: one program per (value tile, batch·head) walks the chunks --------------------------

@triton.jit
def _fwd_kernel(q, k, v, b, h0, o, ht, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                EXCLUSIVE: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                LOW_PRECISION: tl.constexpr):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    state_offsets = i_bh * K * V + cols_k[:, None] * V + cols_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    for start in range(0, T, C):
        mask_t, token, last = _frame(start, rows, i_b, i_h, T, H, C)
        qc = _tile(q, token, cols_k, mask_t, mask_k, K)
        kc = _tile(k, token, cols_k, mask_t, mask_k, K)
        vc = _tile(v, token, cols_v, mask_t, mask_v, V)
        bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
        oc = _chunk_output(S, qc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v,
                           mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
        S = _decayed(S, b_last, DECAY) + _chunk_kv(kc, vc, bc, b_last, DECAY, LOW_PRECISION)
        tl.store(o + token[:, None] * V + cols_v[None, :], oc, mask=mask_t[:, None] & mask_v[None, :])
    if STORE_HT:
        tl.store(ht + state_offsets, S, mask=state_mask)


@triton.jit
def _bwd_dq_kernel(q, k, v, b, h0, do, dq, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                   EXCLUSIVE: tl.constexpr, HAS_H0: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """Forward sweep recomputing S: dq_t = Σ_{s ≤ t} (do_t · v_s) k_s e^{b_t − b_s} + e^{b_t} ⊙ S_before do_t."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh * K * V + cols_k[:, None] * V + cols_v[None, :],
                     mask=mask_k[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    dq_base = dq + i_v * (tl.num_programs(1) // H) * T * H * K  # this value tile's partial dq
    for start in range(0, T, C):
        mask_t, token, last = _frame(start, rows, i_b, i_h, T, H, C)
        kc = _tile(k, token, cols_k, mask_t, mask_k, K)
        vc = _tile(v, token, cols_v, mask_t, mask_v, V)
        doc = _tile(do, token, cols_v, mask_t, mask_v, V)
        bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
        dqc = _chunk_dq(S, doc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v,
                        mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
        S = _decayed(S, b_last, DECAY) + _chunk_kv(kc, vc, bc, b_last, DECAY, LOW_PRECISION)
        tl.store(dq_base + token[:, None] * K + cols_k[None, :], dqc, mask=mask_t[:, None] & mask_k[None, :])


@triton.jit
def _bwd_dkv_kernel(q, k, v, b, do, dht, dk, dv, dh0, T, H: tl.constexpr, K: tl.constexpr,
                    V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr, HAS_DHT: tl.constexpr,
                    STORE_DH0: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """Reverse sweep carrying dS (the gradient of the state at a chunk's end): dk, dv and dS_0."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    state_offsets = i_bh * K * V + cols_k[:, None] * V + cols_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + state_offsets, mask=state_mask, other=0.0).to(tl.float32)
    dk_base = dk + i_v * (tl.num_programs(1) // H) * T * H * K
    n_chunks = tl.cdiv(T, C)
    for n in range(n_chunks):
        start = (n_chunks - 1 - n) * C
        mask_t, token, last = _frame(start, rows, i_b, i_h, T, H, C)
        qc = _tile(q, token, cols_k, mask_t, mask_k, K)
        kc = _tile(k, token, cols_k, mask_t, mask_k, K)
        vc = _tile(v, token, cols_v, mask_t, mask_v, V)
        doc = _tile(do, token, cols_v, mask_t, mask_v, V)
        bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
        dkc, dvc = _chunk_dkv(dS, qc, kc, vc, doc, bc, bq, b_last, q, do, b, start, rows, mask_t, i_b, i_h, T, cols_k,
                              mask_k, cols_v, mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
        dS = _decayed(dS, b_last, DECAY) + _chunk_qdo(qc, doc, bq, DECAY, LOW_PRECISION)
        tl.store(dk_base + token[:, None] * K + cols_k[None, :], dkc, mask=mask_t[:, None] & mask_k[None, :])
        tl.store(dv + token[:, None] * V + cols_v[None, :], dvc, mask=mask_t[:, None] & mask_v[None, :])
    if STORE_DH0:
        tl.store(dh0 + state_offsets, dS, mask=state_mask)


# ---- chunk-parallel schedule: (a) per-chunk contributions, (b) a scan over chunks, (c) per-chunk outputs ----

@triton.jit
def _chunk_local_kernel(a, x, b, out, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr,
                        QUERY: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """out[bh, n] = chunk n's own part of the carried state (a = k, x = v: Σ_s exp(b_last − b_s) k_s v_sᵀ), or of
    its gradient (QUERY, a = q, x = do: Σ_t exp(bq_t) q_t do_tᵀ). One program per (value tile, chunk, b·h)."""
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    mask_t, token, last = _frame(i_n * C, rows, i_b, i_h, T, H, C)
    ac = _tile(a, token, cols_k, mask_t, mask_k, K)
    xc = _tile(x, token, cols_v, mask_t, mask_v, V)
    bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
    if QUERY:
        part = _chunk_qdo(ac, xc, bq, DECAY, LOW_PRECISION)
    else:
        part = _chunk_kv(ac, xc, bc, b_last, DECAY, LOW_PRECISION)
    offsets = (i_bh.to(tl.int64) * tl.cdiv(T, C) + i_n) * K * V + cols_k[:, None] * V + cols_v[None, :]
    tl.store(out + offsets, part, mask=mask_k[:, None] & mask_v[None, :])


@triton.jit
def _scan_kernel(x, b, init, final, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
                 BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, REVERSE: tl.constexpr,
                 HAS_INIT: tl.constexpr, STORE_FINAL: tl.constexpr):
    """In place over x (B·H, N, K, V), in chunk order (or reversed): x_n ← carry, carry ← exp(b_last,n) ⊙ carry + x_n.
    Forward, from the initial state, this leaves the state entering every chunk (and the final state); reversed,
    from dS_T, the gradient of the state leaving every chunk (and of the initial state)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    cols_k, cols_v = tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    tile = cols_k[:, None] * V + cols_v[None, :]
    tile_mask = mask_k[:, None] & mask_v[None, :]
    carry = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INIT:
        carry += tl.load(init + i_bh * K * V + tile, mask=tile_mask, other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(T, C)
    for m in range(n_chunks):
        if REVERSE:
            n = n_chunks - 1 - m
        else:
            n = m
        at = x + (i_bh.to(tl.int64) * n_chunks + n) * K * V + tile
        part = tl.load(at, mask=tile_mask, other=0.0)
        tl.store(at, carry, mask=tile_mask)
        last = (i_b * T + tl.minimum(n * C + C, T) - 1) * H + i_h
        if DECAY == 1:
            carry = carry * tl.exp(tl.load(b + last))
        elif DECAY == 2:
            carry = carry * tl.exp(tl.load(b + last * K + cols_k, mask=mask_k, other=0.0))[:, None]
        carry += part
    if STORE_FINAL:
        tl.store(final + i_bh * K * V + tile, carry, mask=tile_mask)


@triton.jit
def _chunk_fwd_kernel(q, k, v, b, states, o, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                      C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                      EXCLUSIVE: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """One chunk's outputs from the state entering it: intra-chunk part + exp(bq_t) ⊙ q_t read through S_n."""
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    start = i_n * C
    mask_t, token, last = _frame(start, rows, i_b, i_h, T, H, C)
    at = (i_bh.to(tl.int64) * tl.cdiv(T, C) + i_n) * K * V + cols_k[:, None] * V + cols_v[None, :]
    S = tl.load(states + at, mask=mask_k[:, None] & mask_v[None, :], other=0.0)
    qc = _tile(q, token, cols_k, mask_t, mask_k, K)
    kc = _tile(k, token, cols_k, mask_t, mask_k, K)
    vc = _tile(v, token, cols_v, mask_t, mask_v, V)
    bc, bq, _ = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
    oc = _chunk_output(S, qc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v,
                       mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
    tl.store(o + token[:, None] * V + cols_v[None, :], oc, mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _chunk_bwd_kernel(q, k, v, b, do, states, dstates, dq, dk, dv, T, H: tl.constexpr, K: tl.constexpr,
                      V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                      EXCLUSIVE: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """One chunk's dq (from the state entering it) and dk, dv (from the gradient dS of the state leaving it);
    dq and dk are this value tile's partial sums."""
    i_v, i_n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    start = i_n * C
    mask_t, token, last = _frame(start, rows, i_b, i_h, T, H, C)
    at = (i_bh.to(tl.int64) * tl.cdiv(T, C) + i_n) * K * V + cols_k[:, None] * V + cols_v[None, :]
    S = tl.load(states + at, mask=mask_k[:, None] & mask_v[None, :], other=0.0)
    dS = tl.load(dstates + at, mask=mask_k[:, None] & mask_v[None, :], other=0.0)
    qc = _tile(q, token, cols_k, mask_t, mask_k, K)
    kc = _tile(k, token, cols_k, mask_t, mask_k, K)
    vc = _tile(v, token, cols_v, mask_t, mask_v, V)
    doc = _tile(do, token, cols_v, mask_t, mask_v, V)
    bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
    dqc = _chunk_dq(S, doc, kc, vc, bc, bq, k, v, b, start, rows, mask_t, i_b, i_h, T, cols_k, mask_k, cols_v,
                    mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
    dkc, dvc = _chunk_dkv(dS, qc, kc, vc, doc, bc, bq, b_last, q, do, b, start, rows, mask_t, i_b, i_h, T, cols_k,
                          mask_k, cols_v, mask_v, H, K, V, C, DECAY, EXCLUSIVE, LOW_PRECISION)
    partial = i_v * (tl.num_programs(2) // H) * T * H * K  # this value tile's partial dq and dk
    tile_k = mask_t[:, None] & mask_k[None, :]
    tl.store(dq + partial + token[:, None] * K + cols_k[None, :], dqc, mask=tile_k)
    tl.store(dk + partial + token[:, None] * K + cols_k[None, :], dkc, mask=tile_k)
    tl.store(dv + token[:, None] * V + cols_v[None, :], dvc, mask=mask_t[:, None] & mask_v[None, :])


def chunk_local_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inclusive cumulative log decay restarted at every chunk start (small magnitudes: exact differences)."""
    B, T = g.shape[:2]
    n = -(-T // chunk)
    padded = torch.nn.functional.pad(g.float(), [0, 0] * (g.dim() - 2) + [0, n * chunk - T])
    return padded.view(B, n, chunk, *g.shape[2:]).cumsum(2).view(B, n * chunk, *g.shape[2:])[:, :T].contiguous()


def low_precision(dtype: torch.dtype) -> bool:
    """Whether dots multiply in bf16: for 16-bit inputs, except in Triton's CPU interpreter, which mis-multiplies
    bf16 dots (triton 3.9) and so keeps fp32 products there."""
    return dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1"


def _config(q, v, log_decay):
    K, V = q.shape[-1], v.shape[-1]
    decay = 0 if log_decay is None else (1 if log_decay.dim() == 3 else 2)
    return dict(
        C=CHUNK_PER_CHANNEL if decay == 2 else CHUNK_PER_HEAD,
        BK=max(16, triton.next_power_of_2(K)),
        BV=max(16, min(MAX_VALUE_TILE, triton.next_power_of_2(V))),
        DECAY=decay,
        LOW_PRECISION=low_precision(q.dtype),
    )


def chunk_states(k, v, b, initial_state, cfg, store_final: bool, query_side: bool = False):
    """Phases (a) and (b) of the chunk-parallel schedule: the state entering every chunk, (B·H, N, K, V) fp32,
    and the final state (B, H, K, V) or None. With `query_side`, k and v are q and do and `initial_state` is dS_T:
    the scan runs backwards and gives the gradient of the state leaving every chunk and of the initial state."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    n_chunks, n_v = triton.cdiv(T, cfg["C"]), triton.cdiv(V, cfg["BV"])
    states = k.new_empty(B * H, n_chunks, K, V, dtype=torch.float32)
    final = k.new_empty(B, H, K, V, dtype=torch.float32) if store_final else None
    decays = dict(DECAY=cfg["DECAY"], C=cfg["C"], BK=cfg["BK"], BV=cfg["BV"])
    _chunk_local_kernel[(n_v, n_chunks, B * H)](k, v, b, states, T, H, K, V, EXCLUSIVE=cfg["EXCLUSIVE"],
                                                QUERY=query_side, LOW_PRECISION=cfg["LOW_PRECISION"], **decays)
    _scan_kernel[(n_v, B * H)](states, b, initial_state if initial_state is not None else states,
                               final if final is not None else states, T, H, K, V, REVERSE=query_side,
                               HAS_INIT=initial_state is not None, STORE_FINAL=store_final, **decays)
    return states, final


def chunk_outputs(q, k, v, b, states, cfg):
    """Phase (c): every chunk's outputs (B, T, H, V) fp32 from the states entering the chunks."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = q.new_empty(B, T, H, V, dtype=torch.float32)
    grid = (triton.cdiv(V, cfg["BV"]), triton.cdiv(T, cfg["C"]), B * H)
    _chunk_fwd_kernel[grid](q, k, v, b, states, o, T, H, K, V, **cfg)
    return o


def chunk_gradients(q, k, v, b, do, states, dstates, cfg):
    """dq, dk, dv (fp32) one chunk per program, from the states entering and the state gradients leaving each
    chunk (`chunk_states` forwards and with `query_side`)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    n_v = triton.cdiv(V, cfg["BV"])
    dq = q.new_empty(n_v, B, T, H, K, dtype=torch.float32)
    dk = q.new_empty(n_v, B, T, H, K, dtype=torch.float32)
    dv = q.new_empty(B, T, H, V, dtype=torch.float32)
    _chunk_bwd_kernel[(n_v, triton.cdiv(T, cfg["C"]), B * H)](q, k, v, b, do, states, dstates, dq, dk, dv, T, H, K,
                                                              V, **cfg)
    return dq.sum(0), dk.sum(0), dv


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def pick_schedule(schedule: str, device: torch.device, programs: int) -> str:
    """`auto`: chunk-parallel when the sequential schedule's `programs` cannot fill a CUDA device (fewer than
    SEQUENTIAL_MIN_PROGRAMS_PER_SM per multiprocessor), else sequential (always so off CUDA: the interpreter)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"linear_recurrence(backend='triton'): schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule != "auto":
        return schedule
    if device.type != "cuda":
        return "sequential"
    few = programs < SEQUENTIAL_MIN_PROGRAMS_PER_SM * _multiprocessors(device)
    return "chunk_parallel" if few else "sequential"


def schedule_for(q, v, log_decay, schedule: str = "auto", cfg: dict | None = None) -> str:
    """The schedule a call on these inputs runs: `pick_schedule` on the sequential schedule's program count
    (`cfg`: the call's `_config`, when the caller has it)."""
    B, _, H, _ = q.shape
    cfg = cfg or _config(q, v, log_decay)
    return pick_schedule(schedule, q.device, B * H * triton.cdiv(v.shape[-1], cfg["BV"]))


class _LinearRecurrenceTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state, exclusive: bool, output_final_state: bool, schedule: str):
        B, T, H, K = q.shape
        V = v.shape[-1]
        if K > 256:
            raise ValueError(f"linear_recurrence(backend='triton'): key dim {K} > 256 is not supported; use 'chunk'")
        cfg = _config(q, v, log_decay)
        schedule = schedule_for(q, v, log_decay, schedule, cfg)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b = chunk_local_cumsum(log_decay, cfg["C"]) if log_decay is not None else q.new_zeros(1, dtype=torch.float32)
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        # The final state is kept whenever decays need it for their gradient (dS_T ⊙ S_T).
        keep_final = output_final_state or log_decay is not None
        if schedule == "sequential":
            o = q.new_empty(B, T, H, V, dtype=torch.float32)
            ht = q.new_empty(B, H, K, V, dtype=torch.float32) if keep_final else None
            _fwd_kernel[(triton.cdiv(V, cfg["BV"]), B * H)](
                q, k, v, b, h0 if h0 is not None else o, o, ht if ht is not None else o, T, H, K, V,
                EXCLUSIVE=exclusive, HAS_H0=h0 is not None, STORE_HT=keep_final, **cfg)
        else:
            cfg_chunk = dict(cfg, EXCLUSIVE=exclusive)
            states, ht = chunk_states(k, v, b, h0, cfg_chunk, keep_final)
            o = chunk_outputs(q, k, v, b, states, cfg_chunk)
        ctx.save_for_backward(q, k, v, b, h0, ht)
        ctx.cfg, ctx.exclusive, ctx.schedule = cfg, exclusive, schedule
        ctx.has_decay = log_decay is not None
        ctx.dtypes = (log_decay.dtype if log_decay is not None else None,
                      initial_state.dtype if initial_state is not None else None)
        return o.to(v.dtype), (ht if output_final_state else None)

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, b, h0, ht = ctx.saved_tensors
        cfg, exclusive = ctx.cfg, ctx.exclusive
        B, T, H, K = q.shape
        V = v.shape[-1]
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        if ctx.schedule == "sequential":
            n_v = triton.cdiv(V, cfg["BV"])
            dq = q.new_empty(n_v, B, T, H, K, dtype=torch.float32)
            dk = q.new_empty(n_v, B, T, H, K, dtype=torch.float32)
            dv = q.new_empty(B, T, H, V, dtype=torch.float32)
            dh0 = q.new_empty(B, H, K, V, dtype=torch.float32) if h0 is not None else None
            grid = (n_v, B * H)
            _bwd_dq_kernel[grid](q, k, v, b, h0 if h0 is not None else dq, do, dq, T, H, K, V,
                                 EXCLUSIVE=exclusive, HAS_H0=h0 is not None, **cfg)
            _bwd_dkv_kernel[grid](q, k, v, b, do, dht if dht is not None else dv, dk, dv,
                                  dh0 if dh0 is not None else dv, T, H, K, V, EXCLUSIVE=exclusive,
                                  HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, **cfg)
            dq, dk = dq.sum(0), dk.sum(0)
        else:
            cfg_chunk = dict(cfg, EXCLUSIVE=exclusive)
            states, _ = chunk_states(k, v, b, h0, cfg_chunk, store_final=False)
            dstates, dh0 = chunk_states(q, do, b, dht, cfg_chunk, store_final=h0 is not None, query_side=True)
            dq, dk, dv = chunk_gradients(q, k, v, b, do, states, dstates, cfg_chunk)
        dg = None
        if ctx.has_decay:
            query_term = q.float() * dq
            if exclusive:  # the query at t reads the state through B_{t−1}
                query_term = torch.cat([query_term[:, 1:], torch.zeros_like(query_term[:, :1])], dim=1)
            dB = query_term - k.float() * dk
            if dht is not None:
                dB[:, -1] += (dht.float() * ht).sum(-1)
            dg = dB.flip(1).cumsum(1).flip(1)
            if cfg["DECAY"] == 1:
                dg = dg.sum(-1)
            dg = dg.to(ctx.dtypes[0])
        if dh0 is not None:
            dh0 = dh0.to(ctx.dtypes[1])
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None, None)


def require_triton_device(q: torch.Tensor, op: str) -> None:
    """Triton kernels run on CUDA, or on CPU only inside Triton's interpreter."""
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{op}(backend='triton') needs a CUDA device, or TRITON_INTERPRET=1 to run "
                           "in Triton's CPU interpreter; use backend='chunk' on CPU")


def linear_recurrence_triton(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                             output_final_state=False, schedule: str = "auto"):
    """Same contract as `linear_recurrence_naive`; runs on CUDA, or on CPU under TRITON_INTERPRET=1.
    schedule: "sequential", "chunk_parallel", or "auto" (`pick_schedule`)."""
    require_triton_device(q, "linear_recurrence")
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    o, final = _LinearRecurrenceTriton.apply(q * scale, k, v, log_decay, initial_state, bonus is not None,
                                             output_final_state, schedule)
    if bonus is not None:  # RWKV-6: the current token enters through diag(u) only, no decay involved
        o = o + (scale * (q.float() * bonus.float()[None, None] * k.float()).sum(-1, keepdim=True) * v.float()).to(o.dtype)
    return o, final
