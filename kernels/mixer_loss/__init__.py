"""Fused mixer-matrix alignment loss: MOHAWK stage 1 (Bick et al. 2024, "matrix orientation") without T × T.

    loss = mean over (b, h) of ‖A − M‖²_F / T
    A[t, s] = softmax_{s ≤ t}(teacher_scale · q̃_t · k̃_s)   teacher, post-RoPE, GQA (kv head h // (Hq / Hkv))
    M[t, s] = row_scale_t · (scale · Σ_c q_tc k_sc exp(Bq_tc − B_sc) + [t = s] · diagonal_t)
              s ≤ t; B = cumsum of log_decay; RWKV "bonus" form: s < t, Bq = B − log_decay, and
              scale · Σ_c q_tc bonus_c k_tc on the diagonal.

    Gated delta rule (`beta` given): M = scale · (Q Kᵀ ⊙ Γ)(I + L)⁻¹ diag(β) (`kernels.delta_rule.matrix`).

Backends: `naive` (both matrices materialised, the ground truth), `tiled` (torch, blocks of query rows,
O(T · tile) memory, recomputed block by block in backward; for the delta rule, the teacher's A is formed and
the student's M is built from `tile`-token chunk blocks, `delta_rule.py`, with no (T × T) solve), `triton`
(forward and backward kernels tiled over (query block, key block), teacher softmax recomputed from its
log-sum-exp; not yet proven on a GPU in every test case; no delta-rule form). `auto`: on CUDA, for per-head
or no decays, the materialised form where its peak fits in a quarter of the free memory (there the tiled form's
loop over query blocks is 3-10x slower than it, docs/gpus.md), else `tiled`. Gradients flow to the student's q, k, log_decay,
bonus, beta, row_scale and diagonal; the teacher is treated as a constant.
"""
from __future__ import annotations

import torch

from kernels._backend import autocast_off
from kernels.mixer_loss.delta_rule import delta_rule_mixer_loss
from kernels.mixer_loss.naive import mixer_matrix_loss_naive, student_matrix, teacher_attention
from kernels.mixer_loss.tiled import mixer_loss_tiled

BACKENDS = ("naive", "tiled", "triton")
# The materialised loss's peak per (batch, head, query, key) entry, forward + backward, fp32, where the student's
# matrix is one product (per-head or no decay): 23-24 bytes on an H100 at T = 1,024-4,096
# (results/kernels_h100_mixer_loss.json: 389, 1,548, 6,177 MiB at B = 1, H = 16).
NAIVE_BYTES_PER_ENTRY = 24


def is_one_product(log_decay=None, bonus=None, beta=None) -> bool:
    """Whether the student's matrix is one (T x T) product: per-head or no decay, no RWKV bonus, not the delta rule."""
    return beta is None and bonus is None and (log_decay is None or log_decay.dim() == 3)


def choose_backend(device_type: str, batch: int, heads: int, length: int, one_product: bool,
                   free_bytes: int | None) -> str:
    """`auto`'s choice: `naive` on CUDA for a matrix that is one product (per-head or no decay, not the delta rule)
    when its peak fits in a quarter of the memory free at the call (the rest is room for what the layers after it
    save for the backward: their calls see less free and turn tiled), else `tiled`. Per-channel decays materialise
    (rows, T, K) blocks and the delta rule a (T x T) solve, unmeasured on a GPU; on CPU `tiled` keeps memory
    O(T · tile)."""
    if device_type != "cuda" or not one_product or free_bytes is None:
        return "tiled"
    return "naive" if NAIVE_BYTES_PER_ENTRY * batch * heads * length * length <= free_bytes // 4 else "tiled"


def _check(teacher_q, teacher_k, q, k, log_decay, bonus, row_scale, diagonal, beta=None) -> None:
    op = "mixer_matrix_loss"
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"{op}: expected student q, k of shape (B, T, H, K), got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, T, H, K = q.shape
    if teacher_q.dim() != 4 or teacher_q.shape[:3] != (B, T, H):
        raise ValueError(f"{op}: expected teacher_q of shape (B, T, H, D) = ({B}, {T}, {H}, D) like the student, "
                         f"got {tuple(teacher_q.shape)}")
    if (teacher_k.dim() != 4 or teacher_k.shape[:2] != (B, T) or teacher_k.shape[3] != teacher_q.shape[3]
            or teacher_k.shape[2] == 0 or H % teacher_k.shape[2]):
        raise ValueError(f"{op}: expected teacher_k of shape (B, T, Hkv, D) with Hkv dividing {H}, "
                         f"got {tuple(teacher_k.shape)} for teacher_q {tuple(teacher_q.shape)}")
    if log_decay is not None and log_decay.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"{op}: expected log_decay of shape (B, T, H) or (B, T, H, K), got {tuple(log_decay.shape)}")
    if bonus is not None and bonus.shape != (H, K):
        raise ValueError(f"{op}: expected bonus of shape (H, K) = ({H}, {K}), got {tuple(bonus.shape)}")
    if row_scale is not None and row_scale.shape != (B, T, H):
        raise ValueError(f"{op}: expected row_scale of shape (B, T, H), got {tuple(row_scale.shape)}")
    if diagonal is not None and diagonal.shape not in ((B, T, H), (H,)):
        raise ValueError(f"{op}: expected diagonal of shape (B, T, H) or (H,), got {tuple(diagonal.shape)}")
    if beta is not None:
        if beta.shape != (B, T, H):
            raise ValueError(f"{op}: expected beta of shape (B, T, H) = ({B}, {T}, {H}), got {tuple(beta.shape)}")
        if log_decay is not None and log_decay.dim() != 3:
            raise ValueError(f"{op}: the delta rule takes one decay per head, log_decay (B, T, H); "
                             f"got {tuple(log_decay.shape)}")
        if bonus is not None or row_scale is not None or diagonal is not None:
            raise ValueError(f"{op}: the delta-rule matrix (beta given) takes no bonus, row_scale or diagonal")


def prepare(q, k, log_decay=None, bonus=None, scale=None, diagonal=None):
    """Fold scale into q and the bonus into one diagonal (B, T, H): what the tiled and Triton forms take.

    Returns q·scale, k, log_decay as (B, T, H, 1|K) or None, the diagonal or None, strict (bonus form).
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    q32, k32 = q.float() * scale, k.float()
    g = None if log_decay is None else (log_decay.float()[..., None] if log_decay.dim() == 3 else log_decay.float())
    diag = None
    if bonus is not None:
        diag = (q32 * bonus.float() * k32).sum(-1)
    if diagonal is not None:
        d = diagonal.float().expand(B, T, H)
        diag = d if diag is None else diag + d
    return q32, k32, g, diag, bonus is not None


def mixer_matrix_loss(teacher_q, teacher_k, q, k, log_decay=None, bonus=None, scale=None, row_scale=None,
                      diagonal=None, teacher_scale=None, tile: int = 64, backend: str = "auto",
                      beta=None) -> torch.Tensor:
    """MOHAWK stage-1 loss between the teacher's causal softmax attention and a recurrent student's matrix.

    teacher_q (B, T, H, D), teacher_k (B, T, Hkv, D): post-RoPE; q, k (B, T, H, K): the student's kernel
    inputs; log_decay None, (B, T, H) or (B, T, H, K), ≤ 0; bonus (H, K): RWKV form; scale: default K^-½;
    row_scale (B, T, H): row multiplier (normalisers); diagonal (B, T, H) or (H,): added on the diagonal
    before row_scale (Mamba's D); teacher_scale: default D^-½; beta (B, T, H): the student is the gated
    delta rule (then log_decay is per head and bonus, row_scale, diagonal are None). Equals
    the materialised loss of `naive.py` with M = the mixer's `mixer_matrix`. Scalar fp32.
    """
    _check(teacher_q, teacher_k, q, k, log_decay, bonus, row_scale, diagonal, beta)
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"mixer_matrix_loss: unknown backend {backend!r}; choose one of {list(BACKENDS) + ['auto']}")
    if tile < 1:
        raise ValueError(f"mixer_matrix_loss: tile must be positive, got {tile}")
    teacher_scale = teacher_q.shape[-1] ** -0.5 if teacher_scale is None else float(teacher_scale)
    if backend == "auto":
        free = torch.cuda.mem_get_info(q.device)[0] if q.device.type == "cuda" else None
        backend = choose_backend(q.device.type, q.shape[0], q.shape[2], q.shape[1],
                                 is_one_product(log_decay, bonus, beta), free)
    if backend == "naive":
        return mixer_matrix_loss_naive(teacher_q, teacher_k, q, k, log_decay, bonus, scale, row_scale, diagonal,
                                       teacher_scale, beta)
    if beta is not None:
        if backend == "triton":
            raise ValueError("mixer_matrix_loss: no Triton form for the delta rule (beta given); use tiled or naive")
        # fp32 whatever the caller's autocast, as the delta rule's kernels: the state products chain across chunks
        with autocast_off(q.device):
            A = teacher_attention(teacher_q.detach(), teacher_k.detach(), teacher_scale)
            return delta_rule_mixer_loss(A, q, k, beta, log_decay, scale, chunk_size=tile)
    tq, tk = teacher_q.detach().float(), teacher_k.detach().float()
    q32, k32, g, diag, strict = prepare(q, k, log_decay, bonus, scale, diagonal)
    rs = None if row_scale is None else row_scale.float()
    if backend == "tiled":
        return mixer_loss_tiled(tq, tk, q32, k32, g, diag, rs, teacher_scale, strict, tile)
    from kernels.mixer_loss.triton import mixer_loss_triton

    return mixer_loss_triton(tq, tk, q32, k32, g, diag, rs, teacher_scale, strict)


__all__ = ["choose_backend", "delta_rule_mixer_loss", "is_one_product", "mixer_matrix_loss",
           "mixer_matrix_loss_naive", "prepare", "student_matrix", "teacher_attention"]
