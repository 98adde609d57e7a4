"""Ground truth for the (gated) delta rule, a loop over time in fp32.

S_t = exp(log_decay_t) (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,   o_t = scale · S_tᵀ q_t
(Yang, Kautz, Hatamizadeh 2024, Gated DeltaNet, arXiv 2412.06464, eq. 10)
"""
from __future__ import annotations

import torch


def delta_rule_naive(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    state = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(T):
        if log_decay is not None:
            state = log_decay[:, t].float().exp()[:, :, None, None] * state
        k_t, b_t = k[:, t], beta[:, t, :, None]
        prediction = torch.einsum("bhk,bhkv->bhv", k_t, state)  # what the memory returns for k_t
        state = state + (b_t * k_t)[..., None] * (v[:, t] - prediction)[:, :, None, :]
        outputs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    o = torch.stack(outputs, dim=1) if T else v.new_zeros(B, 0, H, V)
    return o, (state if output_final_state else None)
