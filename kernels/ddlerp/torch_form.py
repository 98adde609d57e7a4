"""RWKV-6's data-dependent token shift and decay in torch ops: the reference, and the form that trains (autograd)."""
from __future__ import annotations

import torch


def ddlerp_torch(x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2):
    B, T, D = x.shape
    previous = x.new_zeros(B, 1, D) if previous is None else previous.to(x.dtype)
    xx = torch.cat([previous, x[:, :-1]], dim=1) - x
    rank = maa_w2.shape[1]
    mix = torch.tanh(torch.addcmul(x, xx, maa_x) @ maa_w1).view(B * T, 5, rank).transpose(0, 1)
    # stream i interpolates with maa_i + tanh(·) W2_i: the five streams as one batched product, biases folded in
    lerp = torch.baddbmm(maa[:, None], mix, maa_w2).view(5, B, T, D)
    streams = torch.addcmul(x, xx, lerp)  # w, k, v, r, g
    log_decay = -torch.exp(time_decay + torch.tanh(streams[0] @ decay_w1) @ decay_w2)
    return streams[1:], log_decay
