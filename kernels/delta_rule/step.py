"""The decode form of the gated delta rule: token by token with the fewest tensor ops per token.

Same function as `naive` (S_t = exp(log_decay_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t);
a generation step calls it with T = 1, where per-op overhead sets the time: two matmuls and one fused
multiply-add per token. On CPU a token with a state and no gradient runs as one compiled call
(`kernels.native`) where it can be built.
"""
from __future__ import annotations

import torch

from kernels import native


def delta_rule_step(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    compiled = native.one_token(q, initial_state, k, v, beta, log_decay)
    if compiled is not None:  # a decoded token in one call (kernels/native)
        o, state = compiled.delta_step(q, k, v, beta, log_decay, scale, initial_state)
        return o, (state if output_final_state else None)
    state = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(T):
        if log_decay is not None:
            state = log_decay[:, t].float().exp()[:, :, None, None] * state
        k_t = k[:, t, :, None, :].float()  # (B, H, 1, K)
        error = v[:, t, :, None, :].float() - torch.matmul(k_t, state)  # v_t − S_{t−1}ᵀ k_t, (B, H, 1, V)
        state = torch.addcmul(state, (beta[:, t, :, None, None].float() * k_t).transpose(-1, -2), error)
        outputs.append(torch.matmul(q[:, t, :, None, :].float(), state) * scale)
    if not T:
        return v.new_zeros(B, 0, H, V, dtype=torch.float32), (state if output_final_state else None)
    o = (outputs[0] if T == 1 else torch.cat(outputs, dim=2)).transpose(1, 2)  # one token: no copy
    return o, (state if output_final_state else None)
