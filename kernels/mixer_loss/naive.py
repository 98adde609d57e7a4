"""Ground truth: materialise the teacher's attention A and the student's mixing matrix M, (B, H, T, T) each."""
from __future__ import annotations

import torch

from kernels.delta_rule.matrix import delta_rule_matrix
from kernels.linear_recurrence.matrix import linear_recurrence_matrix


def teacher_attention(teacher_q: torch.Tensor, teacher_k: torch.Tensor, teacher_scale: float) -> torch.Tensor:
    """A[b, h, t, s] = softmax_{s ≤ t}(teacher_scale · q_t · k_s), kv head h // (Hq / Hkv). (B, Hq, T, T)."""
    Hq, Hkv = teacher_q.shape[2], teacher_k.shape[2]
    q = teacher_q.float().transpose(1, 2)
    k = teacher_k.float().transpose(1, 2).repeat_interleave(Hq // Hkv, dim=1)
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    logits = (q * teacher_scale) @ k.transpose(-1, -2)  # the scale on the (T × D) side: no extra (T × T) pass
    return logits.masked_fill_(~causal, float("-inf")).softmax(-1)


def student_matrix(q, k, log_decay=None, bonus=None, scale=None, row_scale=None, diagonal=None,
                   beta=None) -> torch.Tensor:
    """M = row_scale_t · (linear_recurrence_matrix + diag(diagonal)), or `delta_rule_matrix` when beta is given;
    (B, H, T, T) in fp32."""
    if beta is not None:
        M = delta_rule_matrix(q, k, beta, log_decay, scale)
    else:
        M = linear_recurrence_matrix(q, k, log_decay, bonus, scale)
    if diagonal is not None:
        d = diagonal.float()
        d = d.transpose(1, 2) if d.dim() == 3 else d[None, :, None].expand(M.shape[0], -1, M.shape[-1])
        M = M + torch.diag_embed(d)
    if row_scale is not None:
        M = M * row_scale.float().transpose(1, 2)[..., None]
    return M


def mixer_matrix_loss_naive(teacher_q, teacher_k, q, k, log_decay=None, bonus=None, scale=None, row_scale=None,
                            diagonal=None, teacher_scale=None, beta=None) -> torch.Tensor:
    """Mean over (B, H) of ‖A − M‖²_F / T, both matrices held in memory."""
    teacher_scale = teacher_q.shape[-1] ** -0.5 if teacher_scale is None else teacher_scale
    A = teacher_attention(teacher_q.detach(), teacher_k.detach(), teacher_scale)
    M = student_matrix(q, k, log_decay, bonus, scale, row_scale, diagonal, beta)
    return (A - M).pow(2).sum((-1, -2)).div(A.shape[-1]).mean()
