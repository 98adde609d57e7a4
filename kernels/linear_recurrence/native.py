"""The linear recurrence's forward on CPU as one compiled call per layer (`kernels/native/sequence_forward.cpp`):
token by token, as the recurrence is written (`naive`), every decay form, RWKV-6's bonus and Mamba-2's key scale and
skip term, while a head's state fits in L1 (`kernels.native.scans`). No backward: where a gradient is to be recorded,
off CPU, for larger states, or where the extension cannot be built, the call runs `chunk` (the key scale and skip as
torch ops around it, `ssd_terms`).
"""
from __future__ import annotations

import torch

from kernels import native
from kernels.chunking import CHUNK, DENORMALS
from kernels.linear_recurrence.chunk import linear_recurrence_chunk
from kernels.linear_recurrence.ssd_terms import scaled_keys, with_skip


def linear_recurrence_native(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                             output_final_state=False, chunk_size: int = CHUNK, key_scale=None, skip=None):
    compiled = native.without_autograd(q, k, v, log_decay, bonus, initial_state, key_scale, skip)
    # the compiled pass rounds as the torch terms do where these hold: an fp32 scale's product with k widened to
    # fp32, and with a skip an fp32 output (the torch term's sum is fp32)
    same_rounding = ((key_scale is None or key_scale.dtype == torch.float32)
                     and (skip is None or v.dtype == torch.float32))
    if compiled is None or not native.scans(q.shape[-1], v.shape[-1]) or not same_rounding:
        o, final = linear_recurrence_chunk(q, scaled_keys(k, key_scale), v, log_decay=log_decay, bonus=bonus,
                                           scale=scale, initial_state=initial_state,
                                           output_final_state=output_final_state, chunk_size=chunk_size)
        return with_skip(o, v, skip), final
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, state = compiled.linear_scan(q, k, v, log_decay, bonus, scale, initial_state, DENORMALS.exp_floor,
                                    key_scale, skip)
    return o.to(v.dtype), (state if output_final_state else None)
