"""The decode form: the recurrence token by token with the fewest tensor ops per token.

Same function as `naive` (S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t, RWKV-6 bonus
form included); a generation step calls it with T = 1, where per-op overhead, not arithmetic, sets the time:
one fused multiply-add for the state and one matmul for the read-out. On CPU a token with a state and no
gradient runs as one compiled call (`kernels.native`) where it can be built.
"""
from __future__ import annotations

import torch

from kernels import native
from kernels.linear_recurrence.ssd_terms import scaled_keys, with_skip


def linear_recurrence_step(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                           output_final_state=False, key_scale=None, skip=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    compiled = native.one_token(q, initial_state, k, v, log_decay, bonus, key_scale, skip)
    # the compiled step rounds as the torch terms where an fp32 scale meets k widened to fp32 (as the scan does)
    if compiled is not None and (key_scale is None or key_scale.dtype == torch.float32):
        o, state = compiled.linear_step(q, k, v, log_decay, bonus, scale, initial_state, key_scale, skip)
        return o, (state if output_final_state else None)
    k = scaled_keys(k, key_scale)
    state = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    bonus = None if bonus is None else bonus.float()[None, :, :, None]
    outputs = []
    for t in range(T):
        kv = k[:, t, :, :, None].float() * v[:, t, :, None, :].float()  # (B, H, K, V)
        if bonus is not None:  # RWKV-6 reads S_{t−1} + diag(u) k_t v_tᵀ
            read = torch.addcmul(state, bonus, kv)
        if log_decay is None:
            state = state + kv
        else:
            decay = log_decay[:, t].float().exp()
            state = torch.addcmul(kv, decay[..., None] if decay.dim() == 3 else decay[..., None, None], state)
        outputs.append(torch.matmul(q[:, t, :, None, :].float(), state if bonus is None else read) * scale)
    if not T:
        return v.new_zeros(B, 0, H, V, dtype=torch.float32), (state if output_final_state else None)
    o = (outputs[0] if T == 1 else torch.cat(outputs, dim=2)).transpose(1, 2)  # one token: no copy
    return with_skip(o, v, skip), (state if output_final_state else None)
