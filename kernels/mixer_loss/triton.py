"""Triton kernels for the fused mixer-matrix loss, tiled over (query block i, key block j) per (batch, head).

Forward: per query block, the teacher's row log-sum-exp (online softmax over key blocks, kv head
h // (H / Hkv)), then per tile A = exp(logits − lse) and the student's M, accumulating Σ(A − M)².
Backward: dM = 2(M − A) / (B·H·T) tile by tile; one kernel per query block gives dq, d row_scale and
d diagonal, one per key block gives dk; the decay gradient follows in torch from
dBq_t = q_t ⊙ dq_t, dB_s = −k_s ⊙ dk_s and a reverse cumsum over time.

Decays are factored relative to the last key of a key block strictly before the query block:
q_t·exp(Bq_t − B_ref) and k_s·exp(B_ref − B_s), both exponents ≤ 0 and both formed from block-local
sums (never a global cumsum over T). Diagonal tiles are built pairwise, one key (or query) row at a time.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD: tl.constexpr):
    tk_blk = tl.load(tk_ptr + ((b * Tp + cols) * HKV + hk)[:, None] * BD + cd[None, :])
    return tl.dot(tq_blk, tl.trans(tk_blk), input_precision="ieee")


@triton.jit
def _own_tile(q_blk, bq_blk, k_ptr, b_ptr, b, h, i, rows, cols, Tp, H, ck, STRICT: tl.constexpr,
              BT: tl.constexpr, BK: tl.constexpr):
    """M0 on the diagonal tile, one key column at a time: Σ_c q_tc k_sc exp(Bq_tc − B_sc)."""
    m0 = tl.zeros((BT, BT), dtype=tl.float32)
    for s in range(BT):
        key = i * BT + s
        k_row = tl.load(k_ptr + ((b * Tp + key) * H + h) * BK + ck)
        b_row = tl.load(b_ptr + ((b * Tp + key) * H + h) * BK + ck)
        if STRICT:
            keep = rows > key
        else:
            keep = rows >= key
        expo = tl.where(keep[:, None], bq_blk - b_row[None, :], float("-inf"))
        column = tl.sum(q_blk * k_row[None, :] * tl.exp(expo), 1)
        m0 = tl.where(cols[None, :] == key, column[:, None], m0)
    return m0


@triton.jit
def _fwd_kernel(tq_ptr, tk_ptr, q_ptr, k_ptr, bq_ptr, b_ptr, back_ptr, tot_ptr, diag_ptr, rs_ptr, lse_ptr, out_ptr,
                T, Tp, H, HKV, NT, tscale, HAS_DIAG: tl.constexpr, HAS_RS: tl.constexpr, STRICT: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // HKV)
    rows = i * BT + tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cd = tl.arange(0, BD)
    row_off = (b * Tp + rows) * H + h
    tq_blk = tl.load(tq_ptr + row_off[:, None] * BD + cd[None, :])
    # teacher log-sum-exp per row, online over key blocks
    m = tl.full((BT,), float("-inf"), tl.float32)
    l = tl.zeros((BT,), tl.float32)
    for j in range(0, i + 1):
        cols = j * BT + tl.arange(0, BT)
        s = _teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD) * tscale
        s = tl.where(rows[:, None] >= cols[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m = m_new
    lse = m + tl.log(l)
    tl.store(lse_ptr + row_off, lse)
    q_blk = tl.load(q_ptr + row_off[:, None] * BK + ck[None, :])
    bq_blk = tl.load(bq_ptr + row_off[:, None] * BK + ck[None, :])
    if HAS_RS:
        r = tl.load(rs_ptr + row_off)
    else:
        r = tl.full((BT,), 1.0, tl.float32)
    err = tl.zeros((BT,), tl.float32)
    between = tl.zeros((BK,), tl.float32)  # Σ of log decays over the blocks strictly between j and i
    for jj in range(0, i):
        j = i - 1 - jj
        cols = j * BT + tl.arange(0, BT)
        col_off = (b * Tp + cols) * H + h
        a = tl.exp(_teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD) * tscale - lse[:, None])
        k_blk = tl.load(k_ptr + col_off[:, None] * BK + ck[None, :])
        back = tl.load(back_ptr + col_off[:, None] * BK + ck[None, :])
        qf = q_blk * tl.exp(bq_blk + between[None, :])
        kf = k_blk * tl.exp(back)
        mm = tl.dot(qf, tl.trans(kf), input_precision="ieee") * r[:, None]
        err += tl.sum((a - mm) * (a - mm), 1)
        between += tl.load(tot_ptr + ((b * NT + j) * H + h) * BK + ck)
    cols = i * BT + tl.arange(0, BT)
    s = _teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD) * tscale
    a = tl.where(rows[:, None] >= cols[None, :], tl.exp(s - lse[:, None]), 0.0)
    m0 = _own_tile(q_blk, bq_blk, k_ptr, b_ptr, b, h, i, rows, cols, Tp, H, ck, STRICT, BT, BK)
    if HAS_DIAG:
        d = tl.load(diag_ptr + row_off)
        m0 = m0 + tl.where(rows[:, None] == cols[None, :], d[:, None], 0.0)
    mm = m0 * r[:, None]
    err += tl.sum((a - mm) * (a - mm), 1)
    err = tl.where(rows < T, err, 0.0)
    tl.store(out_ptr + bh * NT + i, tl.sum(err, 0))


@triton.jit
def _bwd_q_kernel(tq_ptr, tk_ptr, q_ptr, k_ptr, bq_ptr, b_ptr, back_ptr, tot_ptr, diag_ptr, rs_ptr, lse_ptr,
                  dq_ptr, ddiag_ptr, drs_ptr, T, Tp, H, HKV, NT, tscale, coef, HAS_DIAG: tl.constexpr,
                  HAS_RS: tl.constexpr, STRICT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // HKV)
    rows = i * BT + tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cd = tl.arange(0, BD)
    row_off = (b * Tp + rows) * H + h
    live = rows < T
    tq_blk = tl.load(tq_ptr + row_off[:, None] * BD + cd[None, :])
    lse = tl.load(lse_ptr + row_off)
    q_blk = tl.load(q_ptr + row_off[:, None] * BK + ck[None, :])
    bq_blk = tl.load(bq_ptr + row_off[:, None] * BK + ck[None, :])
    if HAS_RS:
        r = tl.load(rs_ptr + row_off)
    else:
        r = tl.full((BT,), 1.0, tl.float32)
    dq = tl.zeros((BT, BK), tl.float32)
    drs = tl.zeros((BT,), tl.float32)
    between = tl.zeros((BK,), tl.float32)
    for jj in range(0, i):
        j = i - 1 - jj
        cols = j * BT + tl.arange(0, BT)
        col_off = (b * Tp + cols) * H + h
        a = tl.exp(_teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD) * tscale - lse[:, None])
        k_blk = tl.load(k_ptr + col_off[:, None] * BK + ck[None, :])
        kf = k_blk * tl.exp(tl.load(back_ptr + col_off[:, None] * BK + ck[None, :]))
        dec = tl.exp(bq_blk + between[None, :])
        m0 = tl.dot(q_blk * dec, tl.trans(kf), input_precision="ieee")
        dm = tl.where(live[:, None], coef * (m0 * r[:, None] - a), 0.0)
        drs += tl.sum(dm * m0, 1)
        dq += tl.dot(dm * r[:, None], kf, input_precision="ieee") * dec
        between += tl.load(tot_ptr + ((b * NT + j) * H + h) * BK + ck)
    cols = i * BT + tl.arange(0, BT)
    s = _teacher_logits(tq_blk, tk_ptr, b, hk, cols, Tp, HKV, cd, BD) * tscale
    a = tl.where(rows[:, None] >= cols[None, :], tl.exp(s - lse[:, None]), 0.0)
    m0 = _own_tile(q_blk, bq_blk, k_ptr, b_ptr, b, h, i, rows, cols, Tp, H, ck, STRICT, BT, BK)
    on_diag = rows[:, None] == cols[None, :]
    if HAS_DIAG:
        d = tl.load(diag_ptr + row_off)
        m0 = m0 + tl.where(on_diag, d[:, None], 0.0)
    dm = tl.where(live[:, None], coef * (m0 * r[:, None] - a), 0.0)
    drs += tl.sum(dm * m0, 1)
    dm0 = dm * r[:, None]
    if HAS_DIAG:
        tl.store(ddiag_ptr + row_off, tl.sum(tl.where(on_diag, dm0, 0.0), 1))
    for s_idx in range(BT):
        key = i * BT + s_idx
        k_row = tl.load(k_ptr + ((b * Tp + key) * H + h) * BK + ck)
        b_row = tl.load(b_ptr + ((b * Tp + key) * H + h) * BK + ck)
        if STRICT:
            keep = rows > key
        else:
            keep = rows >= key
        expo = tl.where(keep[:, None], bq_blk - b_row[None, :], float("-inf"))
        dm_col = tl.sum(tl.where(cols[None, :] == key, dm0, 0.0), 1)
        dq += dm_col[:, None] * k_row[None, :] * tl.exp(expo)
    tl.store(dq_ptr + row_off[:, None] * BK + ck[None, :], dq)
    if HAS_RS:
        tl.store(drs_ptr + row_off, drs)


@triton.jit
def _bwd_k_kernel(tq_ptr, tk_ptr, q_ptr, k_ptr, bq_ptr, b_ptr, back_ptr, tot_ptr, diag_ptr, rs_ptr, lse_ptr,
                  dk_ptr, T, Tp, H, HKV, NT, tscale, coef, HAS_DIAG: tl.constexpr, HAS_RS: tl.constexpr,
                  STRICT: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    j = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // (H // HKV)
    cols = j * BT + tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cd = tl.arange(0, BD)
    col_off = (b * Tp + cols) * H + h
    k_blk = tl.load(k_ptr + col_off[:, None] * BK + ck[None, :])
    back_dec = tl.exp(tl.load(back_ptr + col_off[:, None] * BK + ck[None, :]))
    kf = k_blk * back_dec
    tk_blk = tl.load(tk_ptr + ((b * Tp + cols) * HKV + hk)[:, None] * BD + cd[None, :])
    dk = tl.zeros((BT, BK), tl.float32)
    between = tl.zeros((BK,), tl.float32)
    for i in range(j + 1, NT):
        rows = i * BT + tl.arange(0, BT)
        row_off = (b * Tp + rows) * H + h
        tq_blk = tl.load(tq_ptr + row_off[:, None] * BD + cd[None, :])
        lse = tl.load(lse_ptr + row_off)
        a = tl.exp(tl.dot(tq_blk, tl.trans(tk_blk), input_precision="ieee") * tscale - lse[:, None])
        q_blk = tl.load(q_ptr + row_off[:, None] * BK + ck[None, :])
        qf = q_blk * tl.exp(tl.load(bq_ptr + row_off[:, None] * BK + ck[None, :]) + between[None, :])
        if HAS_RS:
            r = tl.load(rs_ptr + row_off)
        else:
            r = tl.full((BT,), 1.0, tl.float32)
        m0 = tl.dot(qf, tl.trans(kf), input_precision="ieee")
        dm0 = tl.where((rows < T)[:, None], coef * (m0 * r[:, None] - a), 0.0) * r[:, None]
        dk += tl.dot(tl.trans(dm0), qf, input_precision="ieee") * back_dec
        between += tl.load(tot_ptr + ((b * NT + i) * H + h) * BK + ck)
    # the diagonal tile (query block = key block = j)
    rows = cols
    row_off = col_off
    tq_blk = tl.load(tq_ptr + row_off[:, None] * BD + cd[None, :])
    lse = tl.load(lse_ptr + row_off)
    s = tl.dot(tq_blk, tl.trans(tk_blk), input_precision="ieee") * tscale
    a = tl.where(rows[:, None] >= cols[None, :], tl.exp(s - lse[:, None]), 0.0)
    q_blk = tl.load(q_ptr + row_off[:, None] * BK + ck[None, :])
    bq_blk = tl.load(bq_ptr + row_off[:, None] * BK + ck[None, :])
    m0 = _own_tile(q_blk, bq_blk, k_ptr, b_ptr, b, h, j, rows, cols, Tp, H, ck, STRICT, BT, BK)
    if HAS_DIAG:
        d = tl.load(diag_ptr + row_off)
        m0 = m0 + tl.where(rows[:, None] == cols[None, :], d[:, None], 0.0)
    if HAS_RS:
        r = tl.load(rs_ptr + row_off)
    else:
        r = tl.full((BT,), 1.0, tl.float32)
    dm0 = tl.where((rows < T)[:, None], coef * (m0 * r[:, None] - a), 0.0) * r[:, None]
    b_blk = tl.load(b_ptr + col_off[:, None] * BK + ck[None, :])
    for t_idx in range(BT):
        query = j * BT + t_idx
        q_row = tl.load(q_ptr + ((b * Tp + query) * H + h) * BK + ck)
        bq_row = tl.load(bq_ptr + ((b * Tp + query) * H + h) * BK + ck)
        if STRICT:
            keep = query > cols
        else:
            keep = query >= cols
        expo = tl.where(keep[:, None], bq_row[None, :] - b_blk, float("-inf"))
        dm_row = tl.sum(tl.where(rows[:, None] == query, dm0, 0.0), 0)
        dk += dm_row[:, None] * q_row[None, :] * tl.exp(expo)
    tl.store(dk_ptr + col_off[:, None] * BK + ck[None, :], dk)


def _block_size(device: torch.device) -> int:
    return 32 if device.type == "cuda" else 16  # small tiles: fp32 (ieee) dots, many live tiles per program


def _pad(x: torch.Tensor | None, Tp: int, width: int | None = None, value: float = 0.0) -> torch.Tensor | None:
    """(B, T, H[, X]) -> contiguous fp32 (B, Tp, H[, width]), zero padded."""
    if x is None:
        return None
    pad = [0, 0] if x.dim() == 3 else [0, (width or x.shape[-1]) - x.shape[-1], 0, 0]
    return torch.nn.functional.pad(x.float(), pad + [0, Tp - x.shape[1]], value=value).contiguous()


def _decay_sums(g: torch.Tensor, BT: int, strict: bool):
    """Block-local sums of the log decays (B, NT·BT, H, K): B (inclusive from the block start), Bq (the
    query side: exclusive in the bonus form), back (Σ_{r=s+1..block end}) and the block totals (B, NT, H, K)."""
    B, Tp, H, K = g.shape
    blocks = g.view(B, Tp // BT, BT, H, K)
    inclusive = blocks.cumsum(2)
    exclusive = torch.cat([torch.zeros_like(blocks[:, :, :1]), inclusive[:, :, :-1]], 2)
    reverse = blocks.flip(2).cumsum(2).flip(2)  # Σ_{r=s..end}
    back = torch.cat([reverse[:, :, 1:], torch.zeros_like(blocks[:, :, :1])], 2)
    query = exclusive if strict else inclusive
    flat = lambda x: x.reshape(B, Tp, H, K).contiguous()  # noqa: E731
    return flat(query), flat(inclusive), flat(back), inclusive[:, :, -1].contiguous()


class _TritonLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tq, tk, q, k, g, diag, rs, tscale, strict):
        B, T, H, K = q.shape
        Hkv, D = tk.shape[2], tk.shape[3]
        BT = _block_size(q.device)
        NT = triton.cdiv(T, BT)
        Tp, BK, BD = NT * BT, max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(D))
        tq_p, tk_p, q_p, k_p = _pad(tq, Tp, BD), _pad(tk, Tp, BD), _pad(q, Tp, BK), _pad(k, Tp, BK)
        g_p = q_p.new_zeros(B, Tp, H, BK) if g is None else _pad(g.expand(B, T, H, K), Tp, BK)
        bq, bk, back, totals = _decay_sums(g_p, BT, strict)
        diag_p, rs_p = _pad(diag, Tp), _pad(rs, Tp)
        lse = torch.zeros(B, Tp, H, device=q.device, dtype=torch.float32)
        partial = torch.zeros(B * H, NT, device=q.device, dtype=torch.float32)
        dummy = lse  # stands in for absent optional tensors (never read: HAS_* are constexpr)
        _fwd_kernel[(NT, B * H)](tq_p, tk_p, q_p, k_p, bq, bk, back, totals, diag_p if diag is not None else dummy,
                                 rs_p if rs is not None else dummy, lse, partial, T, Tp, H, Hkv, NT, tscale,
                                 HAS_DIAG=diag is not None, HAS_RS=rs is not None, STRICT=strict, BT=BT, BK=BK, BD=BD)
        ctx.save_for_backward(tq_p, tk_p, q_p, k_p, bq, bk, back, totals, diag_p, rs_p, lse)
        ctx.meta = (B, T, H, K, Hkv, NT, Tp, BT, BK, BD, tscale, strict, g is not None and g.shape[-1] == 1,
                    g is not None)
        return partial.sum() / (B * H * T)

    @staticmethod
    def backward(ctx, grad_out):
        tq_p, tk_p, q_p, k_p, bq, bk, back, totals, diag_p, rs_p, lse = ctx.saved_tensors
        B, T, H, K, Hkv, NT, Tp, BT, BK, BD, tscale, strict, per_head, has_g = ctx.meta
        coef = 2.0 / (B * H * T)
        has_diag, has_rs = diag_p is not None, rs_p is not None
        dq = torch.zeros_like(q_p)
        dk = torch.zeros_like(k_p)
        ddiag = torch.zeros(B, Tp, H, device=q_p.device) if has_diag else lse
        drs = torch.zeros(B, Tp, H, device=q_p.device) if has_rs else lse
        args = (tq_p, tk_p, q_p, k_p, bq, bk, back, totals, diag_p if has_diag else lse, rs_p if has_rs else lse, lse)
        flags = dict(HAS_DIAG=has_diag, HAS_RS=has_rs, STRICT=strict, BT=BT, BK=BK, BD=BD)
        _bwd_q_kernel[(NT, B * H)](*args, dq, ddiag, drs, T, Tp, H, Hkv, NT, tscale, coef, **flags)
        _bwd_k_kernel[(NT, B * H)](*args, dk, T, Tp, H, Hkv, NT, tscale, coef, **flags)
        dq, dk = dq[:, :T, :, :K], dk[:, :T, :, :K]
        dg = None
        if has_g and ctx.needs_input_grad[4]:
            q, k = q_p[:, :T, :, :K], k_p[:, :T, :, :K]
            d_query, d_key = q * dq, -(k * dk)  # ∂L/∂Bq_t and ∂L/∂B_s, per channel
            dg = (d_query + d_key).flip(1).cumsum(1).flip(1)
            if strict:
                dg = dg - d_query
            if per_head:
                dg = dg.sum(-1, keepdim=True)
            dg = dg * grad_out
        grads = [dq * grad_out, dk * grad_out, dg,
                 ddiag[:, :T] * grad_out if has_diag else None, drs[:, :T] * grad_out if has_rs else None]
        return (None, None, *grads, None, None)


def mixer_loss_triton(tq, tk, q, k, g=None, diag=None, rs=None, tscale=1.0, strict=False):
    """Prepared inputs (B, T, H, X) (see `kernels.mixer_loss.prepare`) -> the loss; CUDA or the interpreter."""
    return _TritonLoss.apply(tq, tk, q, k, g, diag, rs, tscale, strict)
