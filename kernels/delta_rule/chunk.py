"""Chunked parallel form of the gated delta rule (WY / UT-transform form; Yang et al. 2024, DeltaNet §3).

Writing the update as S_t = α_t S_{t-1} + k_t u_tᵀ with u_t = β_t (v_t − α_t S_{t-1}ᵀ k_t), the
"new values" u of a chunk solve a unit lower-triangular system (I + L) U = diag(β) V − diag(β γ) K S_0,
L[t, s] = β_t (γ_t/γ_s) k_tᵀ k_s (s < t), γ_t the cumulative decay inside the chunk. Everything except
the chunk-to-chunk state hand-over is parallel. Decay ratios are factored about each chunk's midpoint when
every chunk decays by at most exp(−FACTOR_RANGE) (factors within exp(±60)), else taken pairwise (≤ 1).
"""
from __future__ import annotations

import torch

from kernels.linear_recurrence.chunk import CHUNK, FACTOR_RANGE, _masked_exp, _to_chunks


def delta_rule_chunk(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False,
                     chunk_size: int = CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    qc, kc, vc = (_to_chunks(x.float(), N, C) for x in (q, k, v))  # (B, H, N, C, K|V)
    bc = _to_chunks(beta.float()[..., None], N, C)  # (B, H, N, C, 1)
    if log_decay is None:
        g = bc.new_zeros(B, H, N, C, 1)
    else:
        g = _to_chunks(log_decay.float()[..., None], N, C)
    b = g.cumsum(dim=3)  # log γ_t, (B, H, N, C, 1)
    b_last = b[:, :, :, -1:]
    if bool((b_last >= -FACTOR_RANGE).all()):  # γ_t/γ_s = exp(b_t − c)·exp(c − b_s) about each chunk's midpoint
        mid = b_last / 2
        k_down = kc * (mid - b).exp()
        k_up, q_up = kc * (b - mid).exp(), qc * (b - mid).exp()
        L = bc * (k_up @ k_down.transpose(-1, -2)).tril_(-1)
        attn = (q_up @ k_down.transpose(-1, -2)).tril_()  # (B, H, N, C, C)
    else:  # a chunk decays by more than exp(−FACTOR_RANGE): exact pairwise ratios (every exponent ≤ 0)
        idx = torch.arange(C, device=q.device)
        ratio_incl = _masked_exp(b - b.transpose(-1, -2), idx[:, None] >= idx[None, :])  # γ_t/γ_s, s ≤ t
        L = bc * (kc @ kc.transpose(-1, -2)) * ratio_incl.tril(-1)
        attn = (qc @ kc.transpose(-1, -2)) * ratio_incl
    system = L + torch.eye(C, dtype=qc.dtype, device=qc.device)
    # new values U = u_free − w S_0 from (I + L) U = β v − β γ k S_0
    u_free = torch.linalg.solve_triangular(system, bc * vc, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(system, bc * b.exp() * kc, upper=False, unitriangular=True)
    # With U = u_free − w S_0:  o = (q γ − attn w) S_0 + attn u_free,
    # S_next = (γ_C I − k̃ᵀ w) S_0 + k̃ᵀ u_free, k̃ = k γ_C/γ. Only the last line is sequential.
    query_to_state = torch.baddbmm((qc * b.exp()).flatten(0, 2), attn.flatten(0, 2), w.flatten(0, 2), alpha=-1.0)
    query_to_state = query_to_state.view(B, H, N, C, K)
    k_to_end = (kc * (b_last - b).exp()).transpose(-1, -2)  # (B, H, N, K, C)
    eye_k = torch.eye(K, dtype=qc.dtype, device=qc.device)
    transition = b_last[:, :, :, 0, :, None].exp() * eye_k - k_to_end @ w  # (B, H, N, K, K)
    chunk_kv = k_to_end @ u_free  # (B, H, N, K, V)

    state = qc.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    states = _MatrixCarry.apply(transition.flatten(0, 1), chunk_kv.flatten(0, 1), state.flatten(0, 1))
    states = states.view(B, H, N + 1, K, V)
    # o = (q γ − attn w) S_0 + attn u_free, times the scale, the state term accumulated into the other in one call
    o = torch.baddbmm((attn @ u_free).flatten(0, 2), query_to_state.flatten(0, 2), states[:, :, :N].flatten(0, 2),
                      beta=scale, alpha=scale)
    o = o.view(B, H, N * C, V).transpose(1, 2)[:, :T].contiguous()
    return o.to(out_dtype), (states[:, :, N] if output_final_state else None)


class _MatrixCarry(torch.autograd.Function):
    """S_{n+1} = A_n S_n + U_n over chunks (A: K × K transitions), one in-place loop each way, chunk-major so
    every product writes a contiguous block. Backward: dS_n = G_n + A_nᵀ dS_{n+1}, dU_n = dS_{n+1}, dA_n = dS_{n+1} S_nᵀ."""

    @staticmethod
    def forward(ctx, transition, chunk_kv, initial_state):  # (BH, N, K, K), (BH, N, K, V), (BH, K, V)
        BH, N, K, V = chunk_kv.shape
        transition, chunk_kv = transition.transpose(0, 1).contiguous(), chunk_kv.transpose(0, 1).contiguous()
        states = chunk_kv.new_empty(N + 1, BH, K, V)
        states[0] = initial_state
        for n in range(N):
            torch.baddbmm(chunk_kv[n], transition[n], states[n], out=states[n + 1])
        ctx.save_for_backward(transition, states)
        return states.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_states):
        transition, states = ctx.saved_tensors
        N = transition.shape[0]
        grad_states = grad_states.transpose(0, 1).contiguous()
        grad_kv = torch.empty_like(states[1:])
        grad_transition = torch.empty_like(transition)
        grad = grad_states[N].clone()
        for n in range(N - 1, -1, -1):
            grad_kv[n] = grad
            torch.bmm(grad, states[n].transpose(-1, -2), out=grad_transition[n])
            grad = torch.baddbmm(grad_states[n], transition[n].transpose(-1, -2), grad)
        return grad_transition.transpose(0, 1), grad_kv.transpose(0, 1), grad
