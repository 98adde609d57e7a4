"""The linear recurrence's forward on CPU as one compiled call per layer (`kernels/native/sequence_forward.cpp`):
token by token, as the recurrence is written (`naive`), every decay form and RWKV-6's bonus, while a head's state
fits in L1 (`kernels.native.scans`). No backward: where a gradient is to be recorded, off CPU, for larger states, or
where the extension cannot be built, the call runs `chunk`.
"""
from __future__ import annotations

from kernels import native
from kernels.chunking import CHUNK, DENORMALS
from kernels.linear_recurrence.chunk import linear_recurrence_chunk


def linear_recurrence_native(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                             output_final_state=False, chunk_size: int = CHUNK):
    compiled = native.without_autograd(q, k, v, log_decay, bonus, initial_state)
    if compiled is None or not native.scans(q.shape[-1], v.shape[-1]):
        return linear_recurrence_chunk(q, k, v, log_decay=log_decay, bonus=bonus, scale=scale,
                                       initial_state=initial_state, output_final_state=output_final_state,
                                       chunk_size=chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    o, state = compiled.linear_scan(q, k, v, log_decay, bonus, scale, initial_state, DENORMALS.exp_floor)
    return o.to(v.dtype), (state if output_final_state else None)
