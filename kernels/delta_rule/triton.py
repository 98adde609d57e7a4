"""Triton kernels for the gated delta rule: chunked (WY / UT-transform) forward and backward, the CUDA path.

S_t = exp(g_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t (Gated DeltaNet, Yang, Kautz, Hatamizadeh
2024, arXiv 2412.06464, eq. 10), in the chunkwise WY form of Yang et al. 2024, "Parallelizing Linear Transformers
with the Delta Rule", arXiv 2406.06484, §3, with Gated DeltaNet's decay. Per chunk of C tokens, with b the
chunk-local cumulative log decay and Γ[t, s] = exp(b_t − b_s):
- (I + A) is unit lower triangular, A[t, s] = β_t Γ[t, s] k_tᵀ k_s (s < t); its inverse comes from forward
  substitution inside the kernel (once: the backward reuses it), and gives w = (I + A)⁻¹ diag(β e^b) K and
  u = (I + A)⁻¹ diag(β) V;
- the only sequential part, one program per (value tile, batch·head): the "new values" vn = u − w S of every
  chunk and the state S ← e^{b_C} S + Σ_s e^{b_C − b_s} k_s vn_sᵀ (S is K × BV: value columns never mix);
- the outputs are then a gated linear attention over (q, k, vn) from the state entering each chunk: the
  linear recurrence's chunk-parallel kernels (`chunk_outputs`, and `chunk_gradients` backwards).
Every exponent is ≤ 0 (chunk-local differences), so any per-step decay stays exact.
Backward: the gradient dS of the state leaving each chunk is carried backwards (dS ← e^{b_C} dS + (e^b Q)ᵀ dO −
wᵀ dvn), then per chunk dq, dk, dvn as for the linear recurrence and, through w and u, the rest of dk, dv and dβ
(dA = −(dU uᵀ + dW wᵀ) on the strict lower triangle, where dU = (I + A)⁻ᵀ dvn and dW = (I + A)⁻ᵀ (−dvn Sᵀ)).
The decay needs no kernel: scaling S̃_t = e^{−B_t} S_t (B the cumulative log decay) turns the rule into the
ungated one on e^{B_t} q_t and e^{−B_t} v_t, so ∂L/∂B_t = q_t·dq_t − v_t·dv_t (+ dS_T ⊙ S_T at the end) and
∂L/∂g_t = Σ_{r ≥ t} ∂L/∂B_r. Nothing here reads a tensor's value on the host: no synchronisation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.linear_recurrence.triton import (
    chunk_gradients,
    chunk_local_cumsum,
    chunk_outputs,
    low_precision,
    require_triton_device,
)

CHUNK = 64
# Launch shape: a program holds the K × BV state, C × K key tiles and the C × C inverse, so the value tile narrows
# as K grows (K ≤ 64: 64, ≤ 128: 32, else 16) to stay within an SM's registers; 8 warps share the C × C work; one
# pipeline stage, since prefetching the next chunk's tiles in the sequential kernels would take more shared memory
# than an SM has at K = 128.
NUM_WARPS = 8
NUM_STAGES = 1
MAX_KEY_DIM = 256


@triton.jit
def _dot(a, b, LOW_PRECISION: tl.constexpr):
    """16-bit inputs: TF32 products (the operands here are computed fp32: the inverse, the state, the new values);
    fp32 inputs stay exact."""
    if LOW_PRECISION:
        return tl.dot(a, b, input_precision="tf32")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _rows(x, token, cols, mask_t, mask_c, D: tl.constexpr):
    """Rows `token` × columns `cols` of a (tokens, D) matrix in fp32, zero outside the masks."""
    return tl.load(x + token[:, None] * D + cols[None, :], mask=mask_t[:, None] & mask_c[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _chunk(i_n, rows, i_bh, T, H: tl.constexpr, C: tl.constexpr):
    """Chunk i_n of batch·head i_bh: which rows are tokens, their (b, t, h) indices and the last token's."""
    i_b, i_h = i_bh // H, i_bh % H
    t = i_n * C + rows
    mask_t = t < T
    token = (i_b * T + t) * H + i_h
    last = (i_b * T + tl.minimum(i_n * C + C, T) - 1) * H + i_h
    return mask_t, token, last


@triton.jit
def _decays(b, token, mask_t, rows, DECAY: tl.constexpr):
    """b_t (chunk-local cumulative log decay) and Γ[t, s] = e^{b_t − b_s} for s < t (zero elsewhere)."""
    strict = (rows[:, None] > rows[None, :]) & mask_t[:, None]
    if DECAY:
        bc = tl.load(b + token, mask=mask_t, other=0.0)
        gamma = tl.exp(tl.where(strict, bc[:, None] - bc[None, :], float("-inf")))
    else:
        bc = tl.zeros([rows.shape[0]], dtype=tl.float32)
        gamma = tl.where(strict, 1.0, 0.0)
    return bc, gamma


@triton.jit
def _unit_lower_inverse(A, rows, C: tl.constexpr):
    """(I + A)⁻¹ for strictly lower triangular A (C × C) by forward substitution, row i from the rows above it:
    with M = (I + A)⁻¹ − I, M[i] = −A[i] + Σ_{j<i} (−A[i, j]) M[j]."""
    M = -A
    for i in range(1, C):
        row = tl.sum(tl.where(rows[:, None] == i, M, 0.0), axis=0)  # −A[i], zero from column i on
        row += tl.sum(row[:, None] * M, axis=0)
        M = tl.where(rows[:, None] == i, row[None, :], M)
    return M + tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)


@triton.jit
def _wy_kernel(k, v, beta, b, inv, w, u, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr,
               BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, SOLVED: tl.constexpr,
               LOW_PRECISION: tl.constexpr):
    """Per chunk: w = (I + A)⁻¹ diag(β e^b) K and u = (I + A)⁻¹ diag(β) V, and (I + A)⁻¹ itself in `inv` (row t of
    its chunk at token t), or read from there when SOLVED. One program per (chunk, b·h)."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    rows, cols_k = tl.arange(0, C), tl.arange(0, BK)
    mask_k = cols_k < K
    mask_t, token, _ = _chunk(i_n, rows, i_bh, T, H, C)
    kc = _rows(k, token, cols_k, mask_t, mask_k, K)
    bet = tl.load(beta + token, mask=mask_t, other=0.0).to(tl.float32)
    bc, gamma = _decays(b, token, mask_t, rows, DECAY)
    if SOLVED:
        inverse = _rows(inv, token, rows, mask_t, rows < C, C)
    else:
        inverse = _unit_lower_inverse(_dot(kc, tl.trans(kc), LOW_PRECISION) * gamma * bet[:, None], rows, C)
        tl.store(inv + token[:, None] * C + rows[None, :], inverse, mask=mask_t[:, None])
    wc = _dot(inverse, kc * (bet * tl.exp(bc))[:, None], LOW_PRECISION)
    tl.store(w + token[:, None] * K + cols_k[None, :], wc, mask=mask_t[:, None] & mask_k[None, :])
    for v_start in range(0, V, BV):
        cols_v = v_start + tl.arange(0, BV)
        mask_v = cols_v < V
        vc = _rows(v, token, cols_v, mask_t, mask_v, V)
        uc = _dot(inverse, vc * bet[:, None], LOW_PRECISION)
        tl.store(u + token[:, None] * V + cols_v[None, :], uc, mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _states_kernel(k, w, u, b, h0, states, vn, ht, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr, HAS_H0: tl.constexpr,
                   STORE_HT: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """The sequential part, chunk by chunk: states[n] ← S, vn = u − w S, S ← e^{b_C} S + Σ_s e^{b_C − b_s} k_s vn_sᵀ.
    One program per (value tile, b·h)."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    tile = cols_k[:, None] * V + cols_v[None, :]
    tile_mask = mask_k[:, None] & mask_v[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        S += tl.load(h0 + i_bh * K * V + tile, mask=tile_mask, other=0.0)
    n_chunks = tl.cdiv(T, C)
    for i_n in range(n_chunks):
        mask_t, token, last = _chunk(i_n, rows, i_bh, T, H, C)
        tl.store(states + (i_bh.to(tl.int64) * n_chunks + i_n) * K * V + tile, S, mask=tile_mask)
        kc = _rows(k, token, cols_k, mask_t, mask_k, K)
        wc = _rows(w, token, cols_k, mask_t, mask_k, K)
        vnc = _rows(u, token, cols_v, mask_t, mask_v, V) - _dot(wc, S, LOW_PRECISION)
        tl.store(vn + token[:, None] * V + cols_v[None, :], vnc, mask=mask_t[:, None] & mask_v[None, :])
        if DECAY:
            bc = tl.load(b + token, mask=mask_t, other=0.0)
            b_last = tl.load(b + last)
            S = S * tl.exp(b_last) + _dot(tl.trans(kc * tl.exp(b_last - bc)[:, None]), vnc, LOW_PRECISION)
        else:
            S += _dot(tl.trans(kc), vnc, LOW_PRECISION)
    if STORE_HT:
        tl.store(ht + i_bh * K * V + tile, S, mask=tile_mask)


@triton.jit
def _state_grads_kernel(q, k, w, b, do, dht, dstates, dh0, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                        HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """The sequential part of the backward, chunks in reverse: dstates[n] ← dS (the gradient of the state leaving
    chunk n), dvn = (Q Kᵀ ⊙ Γ)ᵀ dO + (e^{b_C − b} ⊙ K) dS, dS ← e^{b_C} dS + (e^b ⊙ Q)ᵀ dO − wᵀ dvn."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    rows, cols_k, cols_v = tl.arange(0, C), tl.arange(0, BK), tl.arange(0, BV) + i_v * BV
    mask_k, mask_v = cols_k < K, cols_v < V
    tile = cols_k[:, None] * V + cols_v[None, :]
    tile_mask = mask_k[:, None] & mask_v[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dS += tl.load(dht + i_bh * K * V + tile, mask=tile_mask, other=0.0)
    n_chunks = tl.cdiv(T, C)
    for m in range(n_chunks):
        i_n = n_chunks - 1 - m
        mask_t, token, last = _chunk(i_n, rows, i_bh, T, H, C)
        tl.store(dstates + (i_bh.to(tl.int64) * n_chunks + i_n) * K * V + tile, dS, mask=tile_mask)
        qc = _rows(q, token, cols_k, mask_t, mask_k, K)
        kc = _rows(k, token, cols_k, mask_t, mask_k, K)
        wc = _rows(w, token, cols_k, mask_t, mask_k, K)
        doc = _rows(do, token, cols_v, mask_t, mask_v, V)
        causal = (rows[:, None] >= rows[None, :]) & mask_t[:, None]
        if DECAY:
            bc = tl.load(b + token, mask=mask_t, other=0.0)
            b_last = tl.load(b + last)
            scores = _dot(qc, tl.trans(kc), LOW_PRECISION) * tl.exp(
                tl.where(causal, bc[:, None] - bc[None, :], float("-inf")))
            dvn = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc * tl.exp(b_last - bc)[:, None], dS,
                                                                    LOW_PRECISION)
            dS = (dS * tl.exp(b_last) + _dot(tl.trans(qc * tl.exp(bc)[:, None]), doc, LOW_PRECISION)
                  - _dot(tl.trans(wc), dvn, LOW_PRECISION))
        else:
            scores = tl.where(causal, _dot(qc, tl.trans(kc), LOW_PRECISION), 0.0)
            dvn = _dot(tl.trans(scores), doc, LOW_PRECISION) + _dot(kc, dS, LOW_PRECISION)
            dS += _dot(tl.trans(qc), doc, LOW_PRECISION) - _dot(tl.trans(wc), dvn, LOW_PRECISION)
    if STORE_DH0:
        tl.store(dh0 + i_bh * K * V + tile, dS, mask=tile_mask)


@triton.jit
def _wy_bwd_kernel(k, v, beta, b, inv, w, u, states, dvn, dk, dv, dbeta, T, H: tl.constexpr, K: tl.constexpr,
                   V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DECAY: tl.constexpr,
                   LOW_PRECISION: tl.constexpr):
    """Per chunk, the gradients through w and u: dv, dβ, and dk added onto the direct part already in `dk`."""
    i_n, i_bh = tl.program_id(0), tl.program_id(1)
    rows, cols_k = tl.arange(0, C), tl.arange(0, BK)
    mask_k = cols_k < K
    mask_t, token, _ = _chunk(i_n, rows, i_bh, T, H, C)
    kc = _rows(k, token, cols_k, mask_t, mask_k, K)
    bet = tl.load(beta + token, mask=mask_t, other=0.0).to(tl.float32)
    bc, gamma = _decays(b, token, mask_t, rows, DECAY)
    kk = _dot(kc, tl.trans(kc), LOW_PRECISION)
    inverse_t = tl.trans(_rows(inv, token, rows, mask_t, rows < C, C))
    dw = tl.zeros([C, BK], dtype=tl.float32)  # ∂L/∂w = −dvn Sᵀ, summed over value tiles
    dA = tl.zeros([C, C], dtype=tl.float32)  # −∂L/∂A before masking, dU uᵀ + dW wᵀ
    db = tl.zeros([C], dtype=tl.float32)
    state_base = states + (i_bh.to(tl.int64) * tl.cdiv(T, C) + i_n) * K * V
    for v_start in range(0, V, BV):
        cols_v = v_start + tl.arange(0, BV)
        mask_v = cols_v < V
        dvnc = _rows(dvn, token, cols_v, mask_t, mask_v, V)
        S = tl.load(state_base + cols_k[:, None] * V + cols_v[None, :], mask=mask_k[:, None] & mask_v[None, :],
                    other=0.0)
        dw -= _dot(dvnc, tl.trans(S), LOW_PRECISION)
        du = _dot(inverse_t, dvnc, LOW_PRECISION)  # ∂L/∂(diag(β) V)
        vc = _rows(v, token, cols_v, mask_t, mask_v, V)
        db += tl.sum(du * vc, axis=1)
        dA += _dot(du, tl.trans(_rows(u, token, cols_v, mask_t, mask_v, V)), LOW_PRECISION)
        tl.store(dv + token[:, None] * V + cols_v[None, :], du * bet[:, None], mask=mask_t[:, None] & mask_v[None, :])
    dx = _dot(inverse_t, dw, LOW_PRECISION)  # ∂L/∂(diag(β e^b) K)
    decay = tl.exp(bc)
    db += tl.sum(dx * kc, axis=1) * decay
    dA += _dot(dx, tl.trans(_rows(w, token, cols_k, mask_t, mask_k, K)), LOW_PRECISION)
    dA = -dA * gamma  # ∂L/∂A on its strict lower triangle (gamma is zero elsewhere), times Γ
    db += tl.sum(dA * kk, axis=1)
    dA = dA * bet[:, None]
    dkc = dx * (bet * decay)[:, None] + _dot(dA, kc, LOW_PRECISION) + _dot(tl.trans(dA), kc, LOW_PRECISION)
    at = token[:, None] * K + cols_k[None, :]
    tile_k = mask_t[:, None] & mask_k[None, :]
    tl.store(dk + at, tl.load(dk + at, mask=tile_k, other=0.0) + dkc, mask=tile_k)
    tl.store(dbeta + token, db, mask=mask_t)


def _config(q, v, log_decay):
    K, V = q.shape[-1], v.shape[-1]
    value_tile = 64 if K <= 64 else (32 if K <= 128 else 16)
    return {"C": CHUNK, "BK": max(16, triton.next_power_of_2(K)),
            "BV": max(16, min(value_tile, triton.next_power_of_2(V))),
            "DECAY": int(log_decay is not None), "LOW_PRECISION": low_precision(q.dtype),
            "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}


def _states(k, v, beta, b, h0, cfg, store_final: bool, inverse=None):
    """The per-chunk inverses (I + A)⁻¹ (B, T, H, C) (solved unless given), w and u (the WY form), then the states
    entering every chunk (B·H, N, K, V), the new values vn (B, T, H, V) and the final state (or None); all fp32."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    n_chunks = triton.cdiv(T, cfg["C"])
    solved = inverse is not None
    if not solved:
        inverse = k.new_empty(B, T, H, cfg["C"], dtype=torch.float32)
    w = k.new_empty(B, T, H, K, dtype=torch.float32)
    u = k.new_empty(B, T, H, V, dtype=torch.float32)
    _wy_kernel[(n_chunks, B * H)](k, v, beta, b, inverse, w, u, T, H, K, V, SOLVED=solved, **cfg)
    states = k.new_empty(B * H, n_chunks, K, V, dtype=torch.float32)
    vn = k.new_empty(B, T, H, V, dtype=torch.float32)
    ht = k.new_empty(B, H, K, V, dtype=torch.float32) if store_final else None
    _states_kernel[(triton.cdiv(V, cfg["BV"]), B * H)](k, w, u, b, h0 if h0 is not None else vn, states, vn,
                                                        ht if ht is not None else vn, T, H, K, V,
                                                        HAS_H0=h0 is not None, STORE_HT=store_final, **cfg)
    return inverse, w, u, states, vn, ht


class _DeltaRuleTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, log_decay, initial_state, output_final_state: bool):
        K = q.shape[-1]
        if K > MAX_KEY_DIM:
            raise ValueError(f"delta_rule(backend='triton'): key dim {K} > {MAX_KEY_DIM} is not supported; use 'chunk'")
        cfg = _config(q, v, log_decay)
        q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
        b = chunk_local_cumsum(log_decay, cfg["C"]) if log_decay is not None else q.new_zeros(1, dtype=torch.float32)
        h0 = initial_state.float().contiguous() if initial_state is not None else None
        inverse, _, _, states, vn, ht = _states(k, v, beta, b, h0, cfg, output_final_state)
        o = chunk_outputs(q, k, vn, b, states, dict(cfg, EXCLUSIVE=False))
        ctx.save_for_backward(q, k, v, beta, b, h0, ht, inverse)  # the inverses: the backward solves nothing
        ctx.cfg = cfg
        ctx.dtypes = (log_decay.dtype if log_decay is not None else None,
                      initial_state.dtype if initial_state is not None else None)
        return o.to(v.dtype), ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, b, h0, ht, inverse = ctx.saved_tensors
        cfg = ctx.cfg
        B, T, H, K = q.shape
        V = v.shape[-1]
        n_chunks = triton.cdiv(T, cfg["C"])
        do = do.contiguous()
        has_dht = dht is not None and ht is not None
        _, w, u, states, vn, _ = _states(k, v, beta, b, h0, cfg, store_final=False, inverse=inverse)
        dstates = q.new_empty(B * H, n_chunks, K, V, dtype=torch.float32)
        dh0 = q.new_empty(B, H, K, V, dtype=torch.float32) if h0 is not None else None
        _state_grads_kernel[(triton.cdiv(V, cfg["BV"]), B * H)](
            q, k, w, b, do, dht.contiguous() if has_dht else do, dstates, dh0 if dh0 is not None else do, T, H, K, V,
            HAS_DHT=has_dht, STORE_DH0=dh0 is not None, **cfg)
        dq, dk, dvn = chunk_gradients(q, k, vn, b, do, states, dstates, dict(cfg, EXCLUSIVE=False))
        dv = torch.empty_like(dvn)
        dbeta = q.new_empty(B, T, H, dtype=torch.float32)
        _wy_bwd_kernel[(n_chunks, B * H)](k, v, beta, b, inverse, w, u, states, dvn, dk, dv, dbeta, T, H, K, V,
                                          **cfg)
        dg = None
        if ctx.dtypes[0] is not None:  # ∂L/∂B_t = q_t·dq_t − v_t·dv_t (+ dS_T ⊙ S_T), summed from the end
            dB = (q.float() * dq).sum(-1) - (v.float() * dv).sum(-1)
            if has_dht:
                dB[:, -1] += (dht.float() * ht).sum((-2, -1))
            dg = dB.flip(1).cumsum(1).flip(1).to(ctx.dtypes[0])
        if dh0 is not None:
            dh0 = dh0.to(ctx.dtypes[1])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta.to(beta.dtype), dg, dh0, None


def delta_rule_triton(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False):
    """Same contract as `delta_rule_naive`; runs on CUDA, or on CPU under TRITON_INTERPRET=1."""
    require_triton_device(q, "delta_rule")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, final = _DeltaRuleTriton.apply(q * scale, k, v, beta, log_decay, initial_state, output_final_state)
    return o, (final if output_final_state else None)
