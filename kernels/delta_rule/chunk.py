"""Chunked parallel form of the gated delta rule (WY / UT-transform form; Yang et al. 2024, "Parallelizing Linear
Transformers with the Delta Rule", arXiv 2406.06484, §3).

Writing the update as S_t = α_t S_{t-1} + k_t u_tᵀ with u_t = β_t (v_t − α_t S_{t-1}ᵀ k_t), the
"new values" u of a chunk solve a unit lower-triangular system (I + L) U = diag(β) V − diag(β γ) K S_0,
L[t, s] = β_t (γ_t/γ_s) k_tᵀ k_s (s < t), γ_t the cumulative decay inside the chunk. Everything except
the chunk-to-chunk state hand-over is parallel. Decay ratios are factored about each chunk's midpoint when
every chunk decays by at most exp(−safe_span) (no product of two factors denormal), else taken pairwise
(≤ 1); thresholds in `kernels.chunking.DENORMALS`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels.chunking import CHUNK, DENORMALS, exp_floored, from_chunks, masked_exp, scan, scan_backward, to_chunks

FLOOR = DENORMALS.delta_floor


def chunk_size_for(log_decay: torch.Tensor | None, chunk_size: int = CHUNK) -> int:
    """The chunk size `delta_rule_chunk` runs at: halved (down to DENORMALS.delta_min_chunk) while a chunk spans beyond
    DENORMALS.delta_halve_span."""
    if log_decay is None:
        return chunk_size
    g = log_decay.detach().float()
    while chunk_size > DENORMALS.delta_min_chunk:
        n = -(-g.shape[1] // chunk_size)
        spans = -F.pad(g, [0, 0, 0, n * chunk_size - g.shape[1]]).unflatten(1, (n, chunk_size)).sum(dim=2)
        if spans.max().item() <= DENORMALS.delta_halve_span:
            break
        chunk_size //= 2
    return chunk_size


class ChunkWY(NamedTuple):
    """The per-chunk quantities of the WY form that the chunk kernel and the blockwise mixing matrix share
    (`kernels.mixer_loss.delta_rule`); every tensor (N, B, H, ·, ·), fp32, γ_t the cumulative decay in the chunk:

    attn = (q kᵀ ⊙ γ_t/γ_s), s ≤ t (C × C);  inverse = (I + L)⁻¹ (C × C);
    w = −(I + L)⁻¹ diag(β γ) k (C × K), the new values' dependence on the chunk's initial state;
    query_to_state = q γ + attn w (C × K);  k_to_end = (k γ_C/γ)ᵀ (K × C);  transition = γ_C I + k_to_end w (K × K).
    With values V the new values are U = inverse diag(β) V + w S_0, the chunk's output (q γ + attn w) S_0 + attn
    inverse diag(β) V, and the next state transition S_0 + k_to_end inverse diag(β) V."""
    attn: torch.Tensor
    inverse: torch.Tensor
    w: torch.Tensor
    query_to_state: torch.Tensor
    k_to_end: torch.Tensor
    transition: torch.Tensor


def chunk_wy(qc: torch.Tensor, kc: torch.Tensor, bc: torch.Tensor, g: torch.Tensor) -> ChunkWY:
    """`ChunkWY` from q, k (N, B, H, C, K), β and the log decays g (N, B, H, C, 1), all fp32 in the chunk layout."""
    N, B, H, C, K = qc.shape
    b = g.cumsum(dim=3)  # log γ_t, (N, B, H, C, 1)
    b_last = b[:, :, :, -1:]
    # (I + L) U = R with L[t, s] = β_t (γ_t/γ_s) k_tᵀ k_s (s < t), through X = ((I + L)⁻¹)ᵀ from X (I + L)ᵀ = I:
    # LAPACK is column-major, so this right-sided form on the transposed system reads and writes our row-major
    # memory as it is (faster than the left-sided solve). Lᵀ is built directly.
    if bool((b_last >= -DENORMALS.safe_span).all()):  # γ_t/γ_s = exp(b_t − c)·exp(c − b_s), c the midpoint
        mid = b_last / 2
        up = (b - mid).exp()  # (N, B, H, C, 1): per-head factors are small, β rides on k's
        k_down = kc * (mid - b).exp()
        k_up_beta, q_up = kc * (up * bc), qc * up
        L_t = (k_down @ k_up_beta.transpose(-1, -2)).triu_(1)
        attn = (q_up @ k_down.transpose(-1, -2)).tril_()  # (N, B, H, C, C)
    else:  # a chunk decays by more than exp(−safe_span): exact pairwise ratios (every exponent ≤ 0)
        idx = torch.arange(C, device=qc.device)
        ratio_incl = masked_exp(b - b.transpose(-1, -2), idx[:, None] >= idx[None, :], FLOOR)  # γ_t/γ_s, s ≤ t
        L_t = (kc @ kc.transpose(-1, -2)) * ratio_incl.tril(-1).transpose(-1, -2) * bc.transpose(-1, -2)
        attn = (qc @ kc.transpose(-1, -2)) * ratio_incl

    # (I + L)⁻¹ once (the unit diagonal implied, never stored or read), then batched products: at these
    # C × C blocks usually faster than triangular solves (results/speed/speed_probes_2026-12-01.md)
    eye = torch.eye(C, dtype=L_t.dtype, device=L_t.device).expand_as(L_t)
    inverse = torch.linalg.solve_triangular(L_t, eye, upper=True, left=False, unitriangular=True).transpose(-1, -2)
    gamma = exp_floored(b, FLOOR)  # γ_t
    w = inverse @ ((-bc * gamma) * kc)  # carries the minus sign: no extra pass
    query_to_state = (qc * gamma).flatten(0, 2).baddbmm_(attn.flatten(0, 2), w.flatten(0, 2)).view(N, B, H, C, K)
    k_to_end = (kc * exp_floored(b_last - b, FLOOR)).transpose(-1, -2)  # (N, B, H, K, C)
    transition = k_to_end @ w  # (N, B, H, K, K), plus γ_C on the diagonal:
    transition.diagonal(dim1=-2, dim2=-1).add_(exp_floored(b_last.squeeze(-1), FLOOR))
    return ChunkWY(attn, inverse, w, query_to_state, k_to_end, transition)


def delta_rule_chunk(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False,
                     chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size_for(log_decay, chunk_size)
    N = max(1, -(-T // C))
    qc, kc, vc = (to_chunks(x.float(), N, C) for x in (q, k, v))  # (N, B, H, C, K|V)
    bc = to_chunks(beta.float()[..., None], N, C)  # (N, B, H, C, 1)
    if log_decay is None:
        g = bc.new_zeros(N, B, H, C, 1)
    else:
        g = to_chunks(log_decay.float()[..., None], N, C)
    wy = chunk_wy(qc, kc, bc, g)
    # new values U = u_free + w S_0, so o = query_to_state S_0 + attn u_free and
    # S_next = transition S_0 + k_to_end u_free: only the last line is sequential
    u_free = wy.inverse @ (bc * vc)
    chunk_kv = wy.k_to_end @ u_free  # (N, B, H, K, V)

    state = qc.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states = _MatrixCarry.apply(wy.transition.flatten(1, 2), chunk_kv.flatten(1, 2), state.flatten(0, 1))
    states = states.view(N + 1, B, H, K, V)
    # the state term accumulated into the other in one call
    o = (wy.attn @ u_free).flatten(0, 2).baddbmm_(wy.query_to_state.flatten(0, 2), states[:N].flatten(0, 2))
    o = from_chunks(o.view(N, B, H, C, V), T, scale, out_dtype)
    return o, (states[N] if output_final_state else None)


class _MatrixCarry(torch.autograd.Function):
    """S_{n+1} = A_n S_n + U_n over chunks (A: K × K transitions), on the linear recurrence's in-place scan.
    Backward: dS_n = G_n + A_nᵀ dS_{n+1}, dU_n = dS_{n+1}, dA_n = dS_{n+1} S_nᵀ (all chunks in one product)."""

    @staticmethod
    def forward(ctx, transition, chunk_kv, initial_state):  # (N, BH, K, K), (N, BH, K, V), (BH, K, V)
        matrices = transition.unbind(0)
        states = scan(chunk_kv, initial_state, lambda kv, n, s, out: torch.baddbmm(kv, matrices[n], s, out=out))
        ctx.save_for_backward(transition, states)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        transition, states = ctx.saved_tensors
        transposed = transition.transpose(-1, -2).unbind(0)
        grad_kv, grad_initial = scan_backward(
            grad_states, lambda g, n, s, out: torch.baddbmm(g, transposed[n], s, out=out))
        grad_transition = (grad_kv.flatten(0, 1) @ states[:-1].flatten(0, 1).transpose(-1, -2)).view_as(transition)
        return grad_transition, grad_kv, grad_initial
