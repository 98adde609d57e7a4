"""Torch form in O(T · tile) memory: blocks of `tile` query rows, recomputed block by block in backward.

Per row block [t0, t1) the student's rows split into keys before the block, a product of two factors
relative to the reference point t0 − 1 (q_t·exp(B_t − B_ref) and k_s·exp(B_ref − B_s), both exponents ≤ 0,
one (tile × t0) matmul), and the block's own keys: a matmul times the exact decay matrix for per-head decays;
for per-channel decays the same two factors (the key's exponent now ≥ 0, at most `FACTOR_SPAN`) where the
block's decay spans no more than that, else exact pairwise differences (tile × tile × K). Decay sums are formed
from local sums (within the block, and backwards from t0), never from a global cumsum, so strong decays
over long T stay exact. Inputs come prepared by `kernels.mixer_loss.prepare` (q already scaled, the bonus
folded into `diagonal`).
"""
from __future__ import annotations

import torch

from kernels.chunking import DENORMALS

# A block whose per-channel log decay spans at most this is factored (its key factors stay within
# exp(±factor_range/2), as the chunked recurrences' factors do); a stronger one is built pairwise.
FACTOR_SPAN = DENORMALS.factor_range / 2


def _block_loss(tq, tk, q, k, g, diag, rs, tscale: float, strict: bool, t0: int, t1: int) -> torch.Tensor:
    """Σ (A − M)² over rows t0..t1−1; tensors in (B, H, T, X) layout, g (B, H, T, 1|K) or None."""
    B, H, T, K = q.shape
    Hkv, n = tk.shape[1], t1 - t0
    # teacher rows: causal softmax over keys 0..t1−1, query head h reads kv head h // (H / Hkv)
    logits = torch.einsum("bgrnd,bgsd->bgrns", tq[:, :, t0:t1].reshape(B, Hkv, H // Hkv, n, -1), tk[:, :, :t1])
    logits = logits.reshape(B, H, n, t1) * tscale
    rows = torch.arange(t0, t1, device=q.device)[:, None]
    cols = torch.arange(t1, device=q.device)[None, :]
    A = logits.masked_fill(cols > rows, float("-inf")).softmax(-1)
    # student rows
    q_blk, k_blk = q[:, :, t0:t1], k[:, :, t0:t1]
    keep = (rows > cols[0, t0:t1]) if strict else (rows >= cols[0, t0:t1])  # (n, n) within the block
    if g is None:
        M_before = q_blk @ k[:, :, :t0].transpose(-1, -2)
        M_own = (q_blk @ k_blk.transpose(-1, -2)).masked_fill(~keep, 0.0)
    else:
        g_blk = g[:, :, t0:t1]
        within = g_blk.cumsum(2)  # Σ_{r=t0..t} g_r
        within_q = within - g_blk if strict else within  # RWKV: the query reads the state before its decay
        # Σ_{r=s+1..t0−1} g_r for s < t0, summed backwards from t0 − 1
        back = g[:, :, 1:t0].flip(2).cumsum(2).flip(2)
        back = torch.cat([back, g.new_zeros(B, H, min(t0, 1), g.shape[-1])], 2)
        q_f = q_blk * within_q.exp()  # q_t exp(Σ_{t0..t} g) (to t − 1 for RWKV): exponents ≤ 0
        M_before = q_f @ (k[:, :, :t0] * back.exp()).transpose(-1, -2)
        if g.shape[-1] == 1:  # per head: one exact (n × n) decay matrix per head, so the scores are a matmul
            diff = within_q[..., 0, None] - within[..., 0][:, :, None]
            M_own = (q_blk @ k_blk.transpose(-1, -2)) * diff.masked_fill(~keep, float("-inf")).exp()
        elif bool((within[:, :, -1] >= -FACTOR_SPAN).all()):
            # per channel, every channel's decay over the block within FACTOR_SPAN: factored about the block's
            # start as the keys before it are, k_s exp(−Σ_{t0..s} g) ≤ exp(FACTOR_SPAN), so one matmul
            M_own = (q_f @ (k_blk * (-within).exp()).transpose(-1, -2)).masked_fill(~keep, 0.0)
        else:  # per channel, decays too strong to factor: exact pairwise differences over (n, n, K)
            diff = within_q[:, :, :, None] - within[:, :, None]
            weight = diff.masked_fill(~keep[..., None], float("-inf")).exp()
            M_own = (q_blk[:, :, :, None] * k_blk[:, :, None] * weight).sum(-1)
    M = torch.cat([M_before, M_own], -1)
    if diag is not None:
        M = M + torch.cat([M.new_zeros(B, H, n, t0), torch.diag_embed(diag[:, :, t0:t1])], -1)
    if rs is not None:
        M = M * rs[:, :, t0:t1, None]
    return (A - M).pow(2).sum()


def _layout(*tensors):
    return [None if t is None else t.transpose(1, 2) for t in tensors]


class _TiledLoss(torch.autograd.Function):
    """Σ over row blocks; backward recomputes one block at a time under autograd (no T × T is ever kept)."""

    @staticmethod
    def forward(ctx, tq, tk, q, k, g, diag, rs, tscale, strict, tile):
        ctx.save_for_backward(tq, tk, q, k, g, diag, rs)
        ctx.args = (tscale, strict, tile)
        B, T, H, _ = q.shape
        args = _layout(tq, tk, q, k, g, diag, rs)
        total = q.new_zeros(())
        for t0 in range(0, T, tile):
            total += _block_loss(*args, tscale, strict, t0, min(t0 + tile, T))
        return total / (B * H * T)

    @staticmethod
    def backward(ctx, grad_out):
        tq, tk, q, k, g, diag, rs = ctx.saved_tensors
        tscale, strict, tile = ctx.args
        B, T, H, _ = q.shape
        student = [q, k, g, diag, rs]
        wanted = [t is not None and need for t, need in zip(student, ctx.needs_input_grad[2:7])]
        grads = [torch.zeros_like(t) if w else None for t, w in zip(student, wanted)]
        if any(wanted):
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(w) if t is not None else None for t, w in zip(student, wanted)]
                teacher = _layout(tq.detach(), tk.detach())
                args = teacher + _layout(*leaves)
                inputs = [leaf for leaf, w in zip(leaves, wanted) if w]
                for t0 in range(0, T, tile):
                    block = _block_loss(*args, tscale, strict, t0, min(t0 + tile, T))
                    for acc, grad in zip([a for a in grads if a is not None],
                                         torch.autograd.grad(block, inputs, allow_unused=True)):
                        if grad is not None:
                            acc += grad
            scale = grad_out / (B * H * T)
            grads = [None if a is None else a * scale for a in grads]
        return (None, None, *grads, None, None, None)


def mixer_loss_tiled(tq, tk, q, k, g=None, diag=None, rs=None, tscale=1.0, strict=False, tile=64):
    """Prepared inputs (B, T, H, X) -> the loss, in O(T · tile) memory (O(T · K + tile² · K) with decays)."""
    return _TiledLoss.apply(tq, tk, q, k, g, diag, rs, tscale, strict, tile)
