"""Ground truth: the recurrence written as a loop over time in fp32.

S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
RWKV-6 form (bonus u):  o_t = scale · q_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ)   (Peng et al. 2024, eq. 16-19)
"""
from __future__ import annotations

import torch


def linear_recurrence_naive(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                            output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q, k, v = q.float(), k.float(), v.float()
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        if log_decay is None:
            decay = 1.0
        elif log_decay.dim() == 3:  # per head
            decay = log_decay[:, t].float().exp()[:, :, None, None]
        else:  # per key channel
            decay = log_decay[:, t].float().exp()[:, :, :, None]
        if bonus is None:
            state = decay * state + kv
            o = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
        else:
            o = torch.einsum("bhk,bhkv->bhv", q[:, t], state + bonus.float()[None, :, :, None] * kv)
            state = decay * state + kv
        outputs.append(scale * o)
    o = torch.stack(outputs, dim=1) if T else v.new_zeros(B, 0, H, V)
    return o, (state if output_final_state else None)
