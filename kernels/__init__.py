"""Pure tensor functions: the two recurrences every student is made of, and the fused distillation loss.

Layout everywhere is (B, T, H, K) for q/k and (B, T, H, V) for v; states are (B, H, K, V) in fp32.
"""
from kernels.delta_rule import delta_rule, delta_rule_matrix
from kernels.distill_loss import fused_distillation_loss
from kernels.linear_recurrence import linear_recurrence, linear_recurrence_matrix
from kernels.mixer_loss import mixer_matrix_loss

__all__ = ["linear_recurrence", "delta_rule", "linear_recurrence_matrix", "delta_rule_matrix", "fused_distillation_loss",
           "mixer_matrix_loss"]
