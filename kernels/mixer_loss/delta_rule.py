"""MOHAWK stage-1 loss for the gated delta rule, its (T × T) matrix built chunk block by chunk block.

The materialised matrix (`kernels.delta_rule.matrix`) solves one (T × T) triangular system per head and
spends most of its time in elementwise passes over (T × T) tensors, forward and backward. Here the matrix
comes from the chunkwise WY form (Yang et al. 2024, arXiv 2406.06484, §3) with the values set to the identity:
for chunks i > j (C tokens each), with the per-chunk quantities of `kernels.delta_rule.chunk`,

    M_jj = scale · attn_j (I + L_j)⁻¹ diag(β_j)                        (C × C, the chunk's own block)
    R_j  = k_to_end_jᵀ (I + L_j)⁻¹ diag(β_j)                           (K × C, what chunk j writes to the state)
    M_ij = scale · query_to_state_i · transition_{i−1} ⋯ transition_{j+1} · R_j   (rank ≤ K)

Blocks are formed one block diagonal (i − j = d) at a time for all chunks at once and compared with the
teacher's blocks there; autograd differentiates through them. Only (C × C) systems are solved, and the
(T × T)-sized work is one pass per block to form it and one to compare it. The per-chunk quantities are the
chunk kernel's (`kernels.delta_rule.chunk.chunk_wy`), with its decay factoring and denormal floor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.chunking import CHUNK, to_chunks
from kernels.delta_rule.chunk import chunk_wy


def delta_rule_matrix_diagonals(q, k, beta, log_decay=None, scale=None, chunk_size: int = CHUNK):
    """The delta rule's mixing matrix (`delta_rule_matrix`) as block diagonals: yields (d, blocks) for d = 0 … N−1,
    blocks (N − d, B, H, C, C) holding M[i, j] for chunks i = j + d, indexed by j (T padded to N·C with zeros:
    padded rows and columns of M are zero). q, k: (B, T, H, K); beta, log_decay: (B, T, H)."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    qc, kc = to_chunks(q.float(), N, C), to_chunks(k.float(), N, C)  # (N, B, H, C, K)
    bc = to_chunks(beta.float()[..., None], N, C)  # (N, B, H, C, 1)
    g = bc.new_zeros(bc.shape) if log_decay is None else to_chunks(log_decay.float()[..., None], N, C)
    wy = chunk_wy(qc, kc, bc, g)  # the chunk kernel's own per-chunk quantities
    values = wy.inverse * bc.transpose(-1, -2)  # (I + L)⁻¹ diag(β): the chunk's new values for identity values
    yield 0, scale * (wy.attn @ values)
    if N == 1:
        return
    state = (wy.k_to_end @ values)[:-1]  # R_j (K × C): chunk j's columns in the state chunk j + 1 reads
    for d in range(1, N):
        yield d, scale * (wy.query_to_state[d:] @ state)
        if d + 1 < N:
            state = wy.transition[d:-1] @ state[:-1]


def delta_rule_mixer_loss(teacher_attention: torch.Tensor, q, k, beta, log_decay=None, scale=None,
                          chunk_size: int = CHUNK) -> torch.Tensor:
    """Mean over (B, H) of ‖A − M‖²_F / T with M the delta rule's matrix, built block by block.

    teacher_attention: A (B, H, T, T), a constant; the student's q, k (B, T, H, K), beta, log_decay (B, T, H)."""
    B, H, T = teacher_attention.shape[:3]
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    A = teacher_attention.detach().float()
    if N * C != T:
        A = F.pad(A, [0, N * C - T, 0, N * C - T])
    A = A.view(B, H, N, C, N, C)
    total = A.new_zeros(())
    for d, blocks in delta_rule_matrix_diagonals(q, k, beta, log_decay, scale, C):
        target = A.diagonal(offset=-d, dim1=2, dim2=4).permute(4, 0, 1, 2, 3)  # A[i = j + d, j], by j
        total = total + (blocks - target).pow(2).sum()
    return total / (T * B * H)
