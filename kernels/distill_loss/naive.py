"""Ground truth: materialise the (B, T, V) logits, then the distillation loss as written.

loss = kl_weight · τ² · mean_{b,t} KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + ce_weight · mean_{b,t<T−1} CE(z_s[b, t], x[b, t+1])

Hinton et al. 2015 scale the soft-target term by τ² so its gradient does not shrink with τ; the KL is per
token (summed over the vocabulary, averaged over tokens), not `batchmean` over (B, T, V).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_loss_naive(student_hidden, student_weight, input_ids, teacher_logits=None, teacher_hidden=None,
                       teacher_weight=None, temperature=1.0, kl_weight=1.0, ce_weight=0.0, chunk_size=None,
                       matmul_dtype=None):
    """Returns (loss, {"kl": τ²·KL, "ce": CE}); `chunk_size` and `matmul_dtype` are ignored (the ground truth,
    everything held at once, in fp32, or in fp64 when the student's inputs are fp64: the benchmarks' reference)."""
    dtype = torch.promote_types(student_hidden.dtype, torch.float32)
    student_logits = student_hidden.to(dtype) @ student_weight.to(dtype).T
    if teacher_logits is None:
        with torch.no_grad():
            teacher_logits = teacher_hidden.to(dtype) @ teacher_weight.to(dtype).T
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean() * temperature**2
    ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
    return kl_weight * kl + ce_weight * ce, {"kl": kl.item(), "ce": ce.item()}
