"""Triton kernels for the linear recurrence: chunked forward and backward (the CUDA training path).

One program per (batch·head, value tile) walks the chunks in order and keeps the fp32 state
S (K × BV) in registers (the "fused chunk" schedule of GLA, Yang et al. 2024, §4): inside a chunk the
output is a masked matrix product, across chunks the state is carried. Decays enter only as
differences of chunk-local cumulative log decays, so every exponent is ≤ 0:
- none / per head: chunks of 64, intra-chunk weights exp(b_t − b_s) on a (C × C) tile;
- per key channel: chunks of 16, the intra-chunk scores summed column by column from pairwise
  differences (exact for RWKV-6's −20 per step), the state carried with exp(b_last − b_s).
Backward: one forward sweep for dq (recomputing S), one reverse sweep carrying dS for dk, dv and the
initial state's gradient. The decay gradient needs no kernel: with B the cumulative log decay,
∂L/∂B_t = q_t ⊙ dq_t − k_t ⊙ dk_t (query term at t − 1 in the RWKV form) plus dS_T ⊙ S_T at the end,
and ∂L/∂g_t = Σ_{r ≥ t} ∂L/∂B_r. The scale and RWKV's bonus term are plain torch around the kernel.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

CHUNK_PER_HEAD = 64
CHUNK_PER_CHANNEL = 16
MAX_VALUE_TILE = 64


@triton.jit
def _dot(a, b, LOW_PRECISION: tl.constexpr):
    """fp32 inputs stay fp32 (no TF32); 16-bit inputs multiply in bf16 with fp32 accumulation."""
    if LOW_PRECISION:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H: tl.constexpr, K: tl.constexpr,
                  DECAY: tl.constexpr, EXCLUSIVE: tl.constexpr):
    """A chunk's local cumulative log decays: keys' b_s, queries' (b_{t−1} in the RWKV form) and the last."""
    if DECAY == 1:
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
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    for start in range(0, T, C):
        t = start + rows
        mask_t = t < T
        live = causal & mask_t[:, None]  # padded query rows must not exponentiate b_s > 0 differences
        token = (i_b * T + t) * H + i_h
        qc = tl.load(q + token[:, None] * K + cols_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        kc = tl.load(k + token[:, None] * K + cols_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        vc = tl.load(v + token[:, None] * V + cols_v[None, :], mask=mask_t[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
        last = (i_b * T + tl.minimum(start + C, T) - 1) * H + i_h
        if DECAY == 0:
            oc = _dot(tl.where(causal, _dot(qc, tl.trans(kc), LOW_PRECISION), 0.0), vc, LOW_PRECISION)
            oc += _dot(qc, S, LOW_PRECISION)
            S += _dot(tl.trans(kc), vc, LOW_PRECISION)
        elif DECAY == 1:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
            weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
            oc = _dot(_dot(qc, tl.trans(kc), LOW_PRECISION) * weight, vc, LOW_PRECISION)
            oc += _dot(qc, S, LOW_PRECISION) * tl.exp(bq)[:, None]
            S = S * tl.exp(b_last) + _dot(tl.trans(kc * tl.exp(b_last - bc)[:, None]), vc, LOW_PRECISION)
        else:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
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
            S = S * tl.exp(b_last)[:, None] + _dot(tl.trans(kc * tl.exp(b_last[None, :] - bc)), vc, LOW_PRECISION)
        tl.store(o + token[:, None] * V + cols_v[None, :], oc, mask=mask_t[:, None] & mask_v[None, :])
    if STORE_HT:
        tl.store(ht + state_offsets, S, mask=state_mask)


@triton.jit
def _bwd_dq_kernel(q, k, v, b, h0, do, dq, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                   EXCLUSIVE: tl.constexpr, HAS_H0: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """Forward sweep: dq_t = Σ_{s ≤ t} (do_t · v_s) k_s e^{b_t − b_s} + e^{b_t} ⊙ S_before do_t, per value tile."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh * K * V + cols_k[:, None] * V + cols_v[None, :],
                     mask=mask_k[:, None] & mask_v[None, :], other=0.0).to(tl.float32)
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    dq_base = dq + i_v * (tl.num_programs(1) // H) * T * H * K  # this value tile's partial dq
    for start in range(0, T, C):
        t = start + rows
        mask_t = t < T
        live = causal & mask_t[:, None]  # padded query rows must not exponentiate b_s > 0 differences
        token = (i_b * T + t) * H + i_h
        tile_k = mask_t[:, None] & mask_k[None, :]
        tile_v = mask_t[:, None] & mask_v[None, :]
        kc = tl.load(k + token[:, None] * K + cols_k[None, :], mask=tile_k, other=0.0).to(tl.float32)
        vc = tl.load(v + token[:, None] * V + cols_v[None, :], mask=tile_v, other=0.0).to(tl.float32)
        doc = tl.load(do + token[:, None] * V + cols_v[None, :], mask=tile_v, other=0.0).to(tl.float32)
        last = (i_b * T + tl.minimum(start + C, T) - 1) * H + i_h
        if DECAY == 0:
            dqc = _dot(tl.where(causal, _dot(doc, tl.trans(vc), LOW_PRECISION), 0.0), kc, LOW_PRECISION)
            dqc += _dot(doc, tl.trans(S), LOW_PRECISION)
            S += _dot(tl.trans(kc), vc, LOW_PRECISION)
        elif DECAY == 1:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
            weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
            dqc = _dot(_dot(doc, tl.trans(vc), LOW_PRECISION) * weight, kc, LOW_PRECISION)
            dqc += _dot(doc, tl.trans(S), LOW_PRECISION) * tl.exp(bq)[:, None]
            S = S * tl.exp(b_last) + _dot(tl.trans(kc * tl.exp(b_last - bc)[:, None]), vc, LOW_PRECISION)
        else:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
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
            S = S * tl.exp(b_last)[:, None] + _dot(tl.trans(kc * tl.exp(b_last[None, :] - bc)), vc, LOW_PRECISION)
        tl.store(dq_base + token[:, None] * K + cols_k[None, :], dqc, mask=tile_k)


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
    causal = rows[:, None] > rows[None, :] if EXCLUSIVE else rows[:, None] >= rows[None, :]
    dk_base = dk + i_v * (tl.num_programs(1) // H) * T * H * K
    n_chunks = tl.cdiv(T, C)
    for n in range(n_chunks):
        start = (n_chunks - 1 - n) * C
        t = start + rows
        mask_t = t < T
        live = causal & mask_t[:, None]  # padded query rows must not exponentiate b_s > 0 differences
        token = (i_b * T + t) * H + i_h
        tile_k = mask_t[:, None] & mask_k[None, :]
        tile_v = mask_t[:, None] & mask_v[None, :]
        qc = tl.load(q + token[:, None] * K + cols_k[None, :], mask=tile_k, other=0.0).to(tl.float32)
        kc = tl.load(k + token[:, None] * K + cols_k[None, :], mask=tile_k, other=0.0).to(tl.float32)
        vc = tl.load(v + token[:, None] * V + cols_v[None, :], mask=tile_v, other=0.0).to(tl.float32)
        doc = tl.load(do + token[:, None] * V + cols_v[None, :], mask=tile_v, other=0.0).to(tl.float32)
        last = (i_b * T + tl.minimum(start + C, T) - 1) * H + i_h
        if DECAY == 0:
            scores = tl.where(causal, _dot(qc, tl.trans(kc), LOW_PRECISION), 0.0)  # [t, s]
            dscores = tl.where(causal, _dot(doc, tl.trans(vc), LOW_PRECISION), 0.0)
            dvc = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc, dS, LOW_PRECISION)
            dkc = _dot(tl.trans(dscores), qc, LOW_PRECISION) + _dot(vc, tl.trans(dS), LOW_PRECISION)
            dS += _dot(tl.trans(qc), doc, LOW_PRECISION)
        elif DECAY == 1:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
            weight = tl.exp(tl.where(live, bq[:, None] - bc[None, :], float("-inf")))
            to_end = tl.exp(b_last - bc)[:, None]
            scores = _dot(qc, tl.trans(kc), LOW_PRECISION) * weight
            dscores = _dot(doc, tl.trans(vc), LOW_PRECISION) * weight
            dvc = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc * to_end, dS, LOW_PRECISION)
            dkc = _dot(tl.trans(dscores), qc, LOW_PRECISION) + _dot(vc, tl.trans(dS), LOW_PRECISION) * to_end
            dS = dS * tl.exp(b_last) + _dot(tl.trans(qc * tl.exp(bq)[:, None]), doc, LOW_PRECISION)
        else:
            bc, bq, b_last = _chunk_decays(b, token, last, rows, mask_t, cols_k, mask_k, H, K, DECAY, EXCLUSIVE)
            to_end = tl.exp(b_last[None, :] - bc)
            dvc = _dot(kc * to_end, dS, LOW_PRECISION)
            dkc = _dot(vc, tl.trans(dS), LOW_PRECISION) * to_end
            for i in range(C):  # query row i reaches every key s ≤ i of the chunk
                token_i = (i_b * T + start + i) * H + i_h
                valid_i = (start + i + tl.zeros([1], dtype=tl.int32)) < T
                q_i = tl.load(q + token_i * K + cols_k, mask=mask_k & valid_i, other=0.0).to(tl.float32)
                do_i = tl.load(do + token_i * V + cols_v, mask=mask_v & valid_i, other=0.0).to(tl.float32)
                if EXCLUSIVE:
                    bq_i = tl.load(b + (token_i - H) * K + cols_k, mask=mask_k & valid_i & (i + tl.zeros([1], dtype=tl.int32) > 0), other=0.0)
                else:
                    bq_i = tl.load(b + token_i * K + cols_k, mask=mask_k & valid_i, other=0.0)
                seen = ((rows < i) if EXCLUSIVE else (rows <= i)) & valid_i
                decay = tl.exp(tl.where(seen[:, None], bq_i[None, :] - bc, float("-inf")))  # [s, c]
                qd = q_i[None, :] * decay
                dvc += tl.sum(kc * qd, axis=1)[:, None] * do_i[None, :]
                dkc += tl.sum(vc * do_i[None, :], axis=1)[:, None] * qd
            dS = dS * tl.exp(b_last)[:, None] + _dot(tl.trans(qc * tl.exp(bq)), doc, LOW_PRECISION)
        tl.store(dk_base + token[:, None] * K + cols_k[None, :], dkc, mask=tile_k)
        tl.store(dv + token[:, None] * V + cols_v[None, :], dvc, mask=tile_v)
    if STORE_DH0:
        tl.store(dh0 + state_offsets, dS, mask=state_mask)


def _chunk_local_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """Inclusive cumulative log decay restarted at every chunk start (small magnitudes: exact differences)."""
    B, T = g.shape[:2]
    n = -(-T // chunk)
    padded = torch.nn.functional.pad(g.float(), [0, 0] * (g.dim() - 2) + [0, n * chunk - T])
    return padded.view(B, n, chunk, *g.shape[2:]).cumsum(2).view(B, n * chunk, *g.shape[2:])[:, :T].contiguous()


def _config(q, v, log_decay):
    K, V = q.shape[-1], v.shape[-1]
    decay = 0 if log_decay is None else (1 if log_decay.dim() == 3 else 2)
    return dict(
        C=CHUNK_PER_CHANNEL if decay == 2 else CHUNK_PER_HEAD,
        BK=max(16, triton.next_power_of_2(K)),
        BV=max(16, min(MAX_VALUE_TILE, triton.next_power_of_2(V))),
        DECAY=decay,
        # Triton's CPU interpreter mis-multiplies bf16 dots (triton 3.9), so it keeps fp32 products there.
        LOW_PRECISION=q.dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") != "1",
    )


class _LinearRecurrenceTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state, exclusive: bool, output_final_state: bool):
        B, T, H, K = q.shape
        V = v.shape[-1]
        if K > 256:
            raise ValueError(f"linear_recurrence(backend='triton'): key dim {K} > 256 is not supported; use 'chunk'")
        cfg = _config(q, v, log_decay)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b = _chunk_local_cumsum(log_decay, cfg["C"]) if log_decay is not None else q.new_zeros(1, dtype=torch.float32)
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        o = q.new_zeros(B, T, H, V, dtype=torch.float32)
        # The final state is kept whenever decays need it for their gradient (dS_T ⊙ S_T).
        keep_final = output_final_state or log_decay is not None
        ht = q.new_zeros(B, H, K, V, dtype=torch.float32) if keep_final else None
        grid = (triton.cdiv(V, cfg["BV"]), B * H)
        _fwd_kernel[grid](q, k, v, b, h0 if h0 is not None else o, o, ht if ht is not None else o, T, H, K, V,
                          EXCLUSIVE=exclusive, HAS_H0=h0 is not None, STORE_HT=keep_final, **cfg)
        ctx.save_for_backward(q, k, v, b, h0, ht)
        ctx.cfg, ctx.exclusive = cfg, exclusive
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
        n_v = triton.cdiv(V, cfg["BV"])
        do = do.contiguous()
        dq = q.new_zeros(n_v, B, T, H, K, dtype=torch.float32)
        dk = q.new_zeros(n_v, B, T, H, K, dtype=torch.float32)
        dv = q.new_zeros(B, T, H, V, dtype=torch.float32)
        dh0 = q.new_zeros(B, H, K, V, dtype=torch.float32) if h0 is not None else None
        grid = (n_v, B * H)
        _bwd_dq_kernel[grid](q, k, v, b, h0 if h0 is not None else dq, do, dq, T, H, K, V,
                             EXCLUSIVE=exclusive, HAS_H0=h0 is not None, **cfg)
        _bwd_dkv_kernel[grid](q, k, v, b, do, dht.contiguous() if dht is not None else dv, dk, dv,
                              dh0 if dh0 is not None else dv, T, H, K, V, EXCLUSIVE=exclusive,
                              HAS_DHT=dht is not None, STORE_DH0=dh0 is not None, **cfg)
        dq, dk = dq.sum(0), dk.sum(0)
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
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None)


def linear_recurrence_triton(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                             output_final_state=False):
    """Same contract as `linear_recurrence_naive`; runs on CUDA, or on CPU under TRITON_INTERPRET=1."""
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("linear_recurrence(backend='triton') needs a CUDA device, or TRITON_INTERPRET=1 to run "
                           "in Triton's CPU interpreter; use backend='chunk' on CPU")
    K = q.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    o, final = _LinearRecurrenceTriton.apply(q * scale, k, v, log_decay, initial_state, bonus is not None,
                                             output_final_state)
    if bonus is not None:  # RWKV-6: the current token enters through diag(u) only, no decay involved
        o = o + (scale * (q.float() * bonus.float()[None, None] * k.float()).sum(-1, keepdim=True) * v.float()).to(o.dtype)
    return o, final
