"""The read-out norm in torch: the reference, and the path that records a gradient (fp32 statistics and product
whatever the inputs' dtype)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {"none": lambda g: g, "silu": F.silu, "sigmoid": torch.sigmoid}


def head_norm_torch(x, weight=None, bias=None, gate=None, kind="rms", activation="silu", eps=1e-5, augment=None):
    x = x.float()
    if augment is not None:
        q, k, v, w = augment
        x = x + torch.sigmoid((q.float() * w * k).sum(-1, keepdim=True) * v.float())
    weight = None if weight is None else weight.float()
    if kind == "rms":
        y = F.rms_norm(x, x.shape[-1:], weight, eps)
    else:
        y = F.layer_norm(x, x.shape[-1:], weight, None if bias is None else bias.float(), eps)
    return y if gate is None else y.mul_(ACTIVATIONS[activation](gate.float()))
