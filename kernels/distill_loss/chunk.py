"""Chunked distillation loss: logits are formed `chunk_size` tokens at a time and never held whole.

Same value as `naive.py`. Liger-kernel style, the forward pass also computes each chunk's gradient with
respect to its logits and folds it into grad_hidden (N, D) and grad_weight (V, D) at once, so backward
only scales the saved gradients by grad_output; peak memory is O(chunk·V + V·D) instead of O(B·T·V).

Per token with student logits s, teacher logits z, temperature τ, q = softmax(s/τ), p = softmax(z/τ):
    d/ds [kl_weight·τ²·KL(p‖q)/N_kl] = kl_weight·τ/N_kl · (q − p)
    d/ds [ce_weight·CE(s, y)/N_ce]   = ce_weight/N_ce · (softmax(s) − onehot(y))   (not for the last position)
The per-chunk softmax work is torch math (below), one compiled pass per row on CPU (`kernels/native`), or one
Triton kernel (`triton.py`).
"""
from __future__ import annotations

import torch

from kernels import native
from kernels._backend import autocast_off

IGNORE = -100  # target of the last position of each sequence: no next token


def chunk_math_torch(logits, teacher_logits, targets, temperature, kl_coef, ce_coef, write_grad=True, scratch=None):
    """Per-chunk work in torch: returns (Σ_rows KL, Σ_valid rows CE) and overwrites `logits` (rows, V, fp32)
    with d(loss)/d(logits) when `write_grad` (with other values when not). KL is at temperature τ without the τ²
    factor. `scratch`: two fp32 tensors shaped like `logits` that the τ = 1 path fills in place of allocating."""
    valid = targets != IGNORE
    if temperature == 1:  # softmax(s/τ) is softmax(s): the CE reuses it (two passes over the logits fewer)
        log_q_out, log_p_out = scratch if scratch is not None else (None, None)
        teacher = teacher_logits.float()
        log_q = torch.log_softmax(logits, dim=-1, out=log_q_out)
        log_p = torch.log_softmax(teacher, dim=-1, out=log_p_out)
        p = torch.softmax(teacher, dim=-1, out=logits)  # s is no longer needed; softmax is cheaper than exp(log p)
        kl = log_p.sub_(log_q).mul_(p).sum(-1).sum()  # Σ p (log p − log q), in place
        picked = log_q.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
        ce = torch.where(valid, -picked, torch.zeros_like(picked)).sum()
        if write_grad:  # (kl_coef + ce_coef·valid)·q − kl_coef·p − ce_coef·onehot(y), over p in place
            p.mul_(-kl_coef).addcmul_(log_q.exp_(), (kl_coef + ce_coef * valid).unsqueeze(1))
            rows = valid.nonzero().squeeze(1)
            logits[rows, targets[rows]] -= ce_coef
        return kl, ce
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    p = log_p.exp()
    kl = log_p.sub_(log_q).mul_(p).sum(-1).sum()  # Σ p (log p − log q), in place to keep memory at a few chunks
    del log_p
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    ce = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
    if write_grad:
        softmax = logits.sub_(lse.unsqueeze(1)).exp_()  # logits become softmax(s), then the gradient
        softmax.mul_((ce_coef * valid).unsqueeze(1))
        rows = valid.nonzero().squeeze(1)
        softmax[rows, targets[rows]] -= ce_coef
        softmax.add_(log_q.exp_().sub_(p).mul_(kl_coef))
    return kl, ce


def chunk_math_native(logits, teacher_logits, targets, temperature, kl_coef, ce_coef, write_grad=True, scratch=None):
    """`chunk_math_torch` as one compiled pass over each row (`kernels/native`, distill_rows) on a CPU at τ = 1:
    KL(p‖q) = Σ p (z − s) + lse(s) − lse(z) from the rows' maxima, exponentials and sums, three passes over a row
    instead of eight. Elsewhere (another device, τ ≠ 1, no compiler, DISTILL_BENCH_NATIVE=0) the torch form."""
    extension = native.module() if logits.device.type == "cpu" and temperature == 1 else None
    if extension is None or logits.dtype != torch.float32 or not logits.is_contiguous():
        return chunk_math_torch(logits, teacher_logits, targets, temperature, kl_coef, ce_coef, write_grad, scratch)
    sums = extension.distill_rows(logits, teacher_logits.float().contiguous(), targets.contiguous(), float(kl_coef),
                                  float(ce_coef), bool(write_grad))
    return sums[0], sums[1]


SCRATCH_USERS = (chunk_math_torch, chunk_math_native)  # the chunk forms that use `scratch` (at τ = 1)


def next_token_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B·T,) targets: the next id, IGNORE at the last position of each sequence."""
    targets = torch.full_like(input_ids, IGNORE)
    targets[:, :-1] = input_ids[:, 1:]
    return targets.reshape(-1)


class FusedDistillLoss(torch.autograd.Function):
    """(hidden, weight, teacher...) -> (loss, τ²·KL, CE); gradients to hidden and weight only."""

    @staticmethod
    def forward(ctx, hidden, weight, input_ids, teacher_logits, teacher_hidden, teacher_weight, temperature,
                kl_weight, ce_weight, chunk_size, chunk_math, matmul_dtype):
        B, T, D = hidden.shape
        N, V = B * T, weight.shape[0]
        n_ce = B * (T - 1)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # The softmax work and every sum are fp32 whatever the caller's autocast; the four products per chunk run
        # in `matmul_dtype` (fp32, or bf16 with fp32 accumulation, outputs widened before any softmax).
        low = matmul_dtype != torch.float32
        with autocast_off(hidden.device):
            h = hidden.reshape(N, D)
            w = weight.detach().to(matmul_dtype)
            if teacher_logits is not None:
                teacher_rows = teacher_logits.detach().reshape(N, V)
            else:
                teacher_rows, tw = teacher_hidden.detach().reshape(N, -1), teacher_weight.detach().to(matmul_dtype)
            targets = next_token_targets(input_ids)
            kl_coef = kl_weight * temperature / N
            ce_coef = ce_weight / n_ce if n_ce else 0.0
            grad_h = torch.zeros(N, D, device=h.device, dtype=torch.float32) if need_hidden else None
            grad_w = torch.zeros(w.shape, device=w.device, dtype=torch.float32) if need_weight else None
            kl_sum = torch.zeros((), device=h.device, dtype=torch.float64)
            ce_sum = torch.zeros((), device=h.device, dtype=torch.float64)
            # Every chunk-sized tensor lives in a buffer made once: on the CPU a fresh tensor of a few MiB per op
            # is fresh pages from the kernel (glibc returns large blocks on free), page faults on first touch.
            rows_max = min(chunk_size, N)

            def chunk_buffer(dtype):
                return torch.empty(rows_max, V, device=h.device, dtype=dtype)

            logits_buf = chunk_buffer(torch.float32)
            # Only the torch form at τ = 1 fills the two scratch buffers, so only it gets them: idle, they would
            # nearly double the peak memory of the Triton form on a GPU.
            uses_scratch = temperature == 1 and chunk_math in SCRATCH_USERS
            scratch = (chunk_buffer(torch.float32), chunk_buffer(torch.float32)) if uses_scratch else None
            teacher_buf = chunk_buffer(torch.float32) if teacher_logits is None else None
            low_buf = chunk_buffer(matmul_dtype) if low else None
            grad_w_low = torch.empty(w.shape, device=w.device, dtype=matmul_dtype) if low and need_weight else None

            def product(a, b, out):  # a @ b into the fp32 `out`, through the low-precision buffer when `low`
                if not low:
                    return torch.mm(a, b, out=out)
                return out.copy_(torch.mm(a, b, out=low_buf[:out.shape[0]]))

            for start in range(0, N, chunk_size):
                end = min(start + chunk_size, N)
                rows = end - start
                hc = h[start:end].to(matmul_dtype)
                logits = product(hc, w.T, logits_buf[:rows])
                teacher = teacher_rows[start:end] if teacher_logits is not None else \
                    product(teacher_rows[start:end].to(matmul_dtype), tw.T, teacher_buf[:rows])
                kl, ce = chunk_math(logits, teacher, targets[start:end], temperature, kl_coef, ce_coef,
                                    write_grad=need_hidden or need_weight,
                                    scratch=[b[:rows] for b in scratch] if scratch else None)
                kl_sum += kl
                ce_sum += ce
                if low:
                    grad = low_buf[:rows].copy_(logits)  # now d(loss)/d(logits)
                    if need_hidden:
                        grad_h[start:end] = grad @ w
                    if need_weight:
                        grad_w += torch.mm(grad.T, hc, out=grad_w_low)
                else:
                    if need_hidden:
                        torch.mm(logits, w, out=grad_h[start:end])
                    if need_weight:
                        grad_w.addmm_(logits.T, hc)
        kl_mean = (kl_sum / N * temperature**2).float()
        ce_mean = (ce_sum / n_ce).float() if n_ce else torch.full((), float("nan"), device=h.device)
        loss = kl_weight * kl_mean + ce_weight * ce_mean
        ctx.save_for_backward(grad_h, grad_w)
        ctx.shapes = hidden.shape, hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(kl_mean, ce_mean)
        return loss, kl_mean, ce_mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        shape, hidden_dtype, weight_dtype = ctx.shapes
        grad_hidden = (grad_h * grad_loss).reshape(shape).to(hidden_dtype) if grad_h is not None else None
        grad_weight = (grad_w * grad_loss).to(weight_dtype) if grad_w is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def distill_loss_chunk(student_hidden, student_weight, input_ids, teacher_logits=None, teacher_hidden=None,
                       teacher_weight=None, temperature=1.0, kl_weight=1.0, ce_weight=0.0, chunk_size=1024,
                       chunk_math=chunk_math_torch, matmul_dtype=torch.float32):
    """Chunked over tokens; `chunk_math` does the per-chunk softmax work (torch here, Triton in triton.py)."""
    loss, kl, ce = FusedDistillLoss.apply(student_hidden, student_weight, input_ids, teacher_logits, teacher_hidden,
                                          teacher_weight, float(temperature), float(kl_weight), float(ce_weight),
                                          int(chunk_size), chunk_math, matmul_dtype)
    return loss, {"kl": kl.item(), "ce": ce.item()}
