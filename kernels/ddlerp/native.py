"""RWKV-6's token shift and decay over a prompt on CPU as one compiled call (`kernels/native/sequence_forward.cpp`),
a block of tokens at a time in cache. No backward: where a gradient is to be recorded the call runs the torch form
compiled by inductor for training (`kernels.ddlerp.inductor`, which runs the plain torch form for small calls); off
CPU, outside fp32 or under autocast (whose bf16 products the torch form keeps), or where the extension cannot be
built, the torch form."""
from __future__ import annotations

import torch

from kernels import native
from kernels.ddlerp.inductor import ddlerp_inductor
from kernels.ddlerp.torch_form import ddlerp_torch


def ddlerp_native(x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2):
    weights = (maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2)
    if native.records_gradient(x, previous, *weights):
        return ddlerp_inductor(x, previous, *weights)
    compiled = native.without_autograd(x, previous, *weights)
    if (compiled is None or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32
            or any(w.dtype != torch.float32 for w in weights)):
        return ddlerp_torch(x, previous, *weights)
    streams, log_decay = compiled.ddlerp(x, previous, *weights)  # (4, B, T, D), (B, T, E)
    return streams, log_decay
