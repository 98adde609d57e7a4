"""The read-out norm over a prompt on CPU as one compiled pass (`kernels/native/sequence_forward.cpp`): each row's
statistics, affine, gate activation and product while the row is in cache. No backward: where a gradient is to be
recorded the call runs the torch form compiled by inductor for training (`kernels.head_norm.inductor`, the plain
torch form for small calls); off CPU, under autocast, for inputs other than (B, T, H, D), or where the extension
cannot be built, the torch form."""
from __future__ import annotations

import torch

from kernels import native
from kernels.head_norm.inductor import head_norm_inductor
from kernels.head_norm.torch_form import head_norm_torch

ACTIVATION_CODES = {"none": 0, "silu": 1, "sigmoid": 2}


def head_norm_native(x, weight=None, bias=None, gate=None, kind="rms", activation="silu", eps=1e-5, augment=None):
    if native.records_gradient(x, weight, bias, gate, *(augment or ())):
        return head_norm_inductor(x, weight, bias, gate, kind, activation, eps, augment)
    compiled = native.without_autograd(x, weight, bias, gate, *(augment or ()))
    if compiled is None or torch.is_autocast_enabled("cpu") or x.dim() != 4:
        return head_norm_torch(x, weight, bias, gate, kind, activation, eps, augment)
    return compiled.head_norm(x, weight, bias, gate, kind == "rms", ACTIVATION_CODES[activation], eps,
                              list(augment or ()))
