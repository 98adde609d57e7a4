"""Triton kernel for the per-chunk softmax work of the chunked distillation loss (matmuls stay in torch).

One program per row (token), looping over the vocabulary in blocks, two passes:
1. online max / logsumexp of s/τ, z/τ and s (τ = 1), and the running Σ exp(z/τ − m)·(z/τ − s/τ), which gives
   KL(p‖q) = Σ p (z/τ − s/τ) − lse(z/τ) + lse(s/τ); CE = lse(s) − s[y] unless the row is ignored;
2. overwrite the row's logits with kl_coef·(q − p) + ce_coef·(softmax(s) − onehot(y)) (see chunk.py).
Block sizes are fixed (no autotuning, which needs a GPU), so it also runs under TRITON_INTERPRET=1 on CPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.distill_loss.chunk import IGNORE

MAX_BLOCK = 4096


@triton.jit
def _distill_row_kernel(s_ptr, z_ptr, y_ptr, kl_ptr, ce_ptr, stride_s, stride_z, V, inv_t, kl_coef, ce_coef,
                        WRITE_GRAD: tl.constexpr, IGNORE_ID: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    z_row = z_ptr + row * stride_z
    y = tl.load(y_ptr + row)
    valid = y != IGNORE_ID
    cols = tl.arange(0, BLOCK)
    m_q = float("-inf")  # running max of s/τ
    d_q = 0.0  # running Σ exp(s/τ − m_q)
    m_p = float("-inf")  # of z/τ
    d_p = 0.0
    a_p = 0.0  # running Σ exp(z/τ − m_p)·(z/τ − s/τ)
    m_s = float("-inf")  # of s (τ = 1, for CE)
    d_s = 0.0
    for start in range(0, V, BLOCK):
        idx = start + cols
        mask = idx < V
        s = tl.load(s_row + idx, mask=mask, other=0.0).to(tl.float32)
        z = tl.load(z_row + idx, mask=mask, other=0.0).to(tl.float32)
        sq = tl.where(mask, s * inv_t, float("-inf"))
        zp = tl.where(mask, z * inv_t, float("-inf"))
        ss = tl.where(mask, s, float("-inf"))
        new_q = tl.maximum(m_q, tl.max(sq, axis=0))
        d_q = d_q * tl.exp(m_q - new_q) + tl.sum(tl.exp(sq - new_q), axis=0)
        m_q = new_q
        new_p = tl.maximum(m_p, tl.max(zp, axis=0))
        e_p = tl.exp(zp - new_p)
        scale_p = tl.exp(m_p - new_p)
        d_p = d_p * scale_p + tl.sum(e_p, axis=0)
        a_p = a_p * scale_p + tl.sum(tl.where(mask, e_p * (z - s) * inv_t, 0.0), axis=0)
        m_p = new_p
        new_s = tl.maximum(m_s, tl.max(ss, axis=0))
        d_s = d_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(ss - new_s), axis=0)
        m_s = new_s
    lse_q = m_q + tl.log(d_q)
    lse_p = m_p + tl.log(d_p)
    lse_s = m_s + tl.log(d_s)
    kl = a_p / d_p - lse_p + lse_q
    y_safe = tl.where(valid, y, 0)
    s_y = tl.load(s_row + y_safe).to(tl.float32)
    ce = tl.where(valid, lse_s - s_y, 0.0)
    tl.store(kl_ptr + row, kl)
    tl.store(ce_ptr + row, ce)
    if WRITE_GRAD:
        ce_row = tl.where(valid, ce_coef, 0.0)
        for start in range(0, V, BLOCK):
            idx = start + cols
            mask = idx < V
            s = tl.load(s_row + idx, mask=mask, other=0.0).to(tl.float32)
            z = tl.load(z_row + idx, mask=mask, other=0.0).to(tl.float32)
            q = tl.exp(s * inv_t - lse_q)
            p = tl.exp(z * inv_t - lse_p)
            soft = tl.exp(s - lse_s)
            grad = kl_coef * (q - p) + ce_row * (soft - tl.where(idx == y, 1.0, 0.0))
            tl.store(s_row + idx, grad, mask=mask)


def chunk_math_triton(logits, teacher_logits, targets, temperature, kl_coef, ce_coef, write_grad=True,
                      block_size=None, scratch=None):
    """Same contract as `chunk.chunk_math_torch`: (Σ KL, Σ CE) and `logits` overwritten by its gradient (one
    pass per row in registers, so `scratch` is not used)."""
    rows, V = logits.shape
    if logits.dtype != torch.float32 or logits.stride(1) != 1:
        raise ValueError("distill_loss triton: logits must be fp32 with a contiguous vocabulary dimension")
    if teacher_logits.stride(1) != 1:
        teacher_logits = teacher_logits.contiguous()
    block = block_size or min(MAX_BLOCK, triton.next_power_of_2(V))
    kl = torch.zeros(rows, device=logits.device, dtype=torch.float32)
    ce = torch.zeros(rows, device=logits.device, dtype=torch.float32)
    _distill_row_kernel[(rows,)](logits, teacher_logits, targets.contiguous(), kl, ce, logits.stride(0),
                                 teacher_logits.stride(0), V, 1.0 / temperature, kl_coef, ce_coef,
                                 WRITE_GRAD=write_grad, IGNORE_ID=IGNORE, BLOCK=block)
    return kl.sum(), ce.sum()
