"""Distillation losses, as plain tensor functions (the stages decide what to feed them).

Conventions that matter for comparing runs:
- KL is per token: summed over the vocabulary, averaged over (batch, time), times τ² (Hinton et al. 2015),
  so its weight against CE does not grow with sequence length (unlike `batchmean` over (B, T, V)).
- Matrix and hidden-state distances are relative to the teacher's magnitude, so layers and teachers of
  different scale weigh the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
             teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of KL(p_teacher ‖ p_student) at temperature τ, times τ².

    `teacher_probs` (already tempered) replaces the teacher's logits, e.g. a fused multi-teacher target.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if teacher_probs is None:
        log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        teacher_probs = log_teacher.exp()
    else:
        log_teacher = teacher_probs.clamp_min(1e-30).log()
    per_token = (teacher_probs * (log_teacher - log_student)).sum(-1)
    return per_token.mean() * temperature**2


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of (B, T, V) logits on the (B, T) ids they were computed from."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def distillation_loss(teacher_logits, student_logits, input_ids, temperature=1.0, kl_weight=1.0, ce_weight=0.0,
                      teacher_probs=None) -> tuple[torch.Tensor, dict[str, float]]:
    """kl_weight · τ²·KL + ce_weight · CE, with both parts reported."""
    kl = token_kl(teacher_logits, student_logits, temperature, teacher_probs)
    ce = next_token_ce(student_logits, input_ids)
    return kl_weight * kl + ce_weight * ce, {"kl": kl.item(), "ce": ce.item()}


def matrix_distance(teacher_matrix: torch.Tensor, student_matrix: torch.Tensor) -> torch.Tensor:
    """MOHAWK stage 1: ‖A − M‖²_F per (batch, head), divided by T (rows), averaged over (batch, head).

    Attention rows sum to one, so for a teacher matrix the value is a mean squared row distance.
    """
    if teacher_matrix.shape != student_matrix.shape:
        raise ValueError(f"teacher matrix {tuple(teacher_matrix.shape)} and student matrix "
                         f"{tuple(student_matrix.shape)} differ; project heads first (attention_transfer)")
    difference = (teacher_matrix.float() - student_matrix.float()).pow(2).sum((-1, -2))
    return (difference / teacher_matrix.shape[-1]).mean()


def relative_l2(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of ‖prediction − target‖² / ‖target‖² (MOHAWK stage 2, scale-free).

    Per sequence, so the mean over a global batch equals the mean of per-process means (DDP-exact).
    """
    target = target.float()
    error = (prediction.float() - target).pow(2).flatten(1).sum(1)
    return (error / target.pow(2).flatten(1).sum(1).clamp_min(1e-12)).mean()


def entropy_weights(teacher_logits: list[torch.Tensor], prior: torch.Tensor, temperature: float = 1.0,
                    sharpness: float = 1.0) -> torch.Tensor:
    """Per-token teacher weights (n_teachers, B, T): prior_i · exp(−H_i,t / sharpness), normalised over i.

    A teacher that is confident (low entropy) about a token gets more say in the fused target there.
    """
    entropies = []
    for logits in teacher_logits:
        log_p = F.log_softmax(logits.float() / temperature, dim=-1)
        entropies.append(-(log_p.exp() * log_p).sum(-1))
    scores = prior.float().log().view(-1, 1, 1) - torch.stack(entropies) / sharpness
    return scores.softmax(dim=0)


def fused_teacher_probs(teacher_logits: list[torch.Tensor], weights: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Σ_i w_i,t · softmax(z_i,t / τ): the weighted output fusion of several teachers."""
    return sum(w.unsqueeze(-1) * F.softmax(z.float() / temperature, dim=-1) for w, z in zip(weights, teacher_logits))
