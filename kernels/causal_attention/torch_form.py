"""The torch forms of causal attention: sdpa (torch's fused kernels, autograd) and the formula written out (the
reference the compiled form is checked against)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._backend import autocast_off


def causal_attention_torch(q, k, v, scale):
    groups = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=groups > 1)
    return out.transpose(1, 2).contiguous()


def causal_attention_naive(q, k, v, scale):
    groups = q.shape[1] // k.shape[1]
    with autocast_off(q.device):
        qf, kf, vf = (x.float() for x in (q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)))
        T = q.shape[2]
        scores = (qf @ kf.transpose(-1, -2)) * scale
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        probabilities = scores.masked_fill(mask, float("-inf")).softmax(-1)
        return (probabilities @ vf).transpose(1, 2).contiguous().to(q.dtype)
