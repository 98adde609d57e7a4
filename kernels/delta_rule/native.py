"""The gated delta rule's forward on CPU as one compiled call per layer (`kernels/native/sequence_forward.cpp`):
token by token while a head's state fits in L1 (`kernels.native.scans`), else the WY form of `chunk` (Yang et al.
2024, arXiv 2406.06484, §3) taken chunk by chunk per head with exact pairwise decay ratios. No backward: where a
gradient is to be recorded, off CPU, or where the extension cannot be built, the call runs `chunk`.
"""
from __future__ import annotations

from kernels import native
from kernels.chunking import CHUNK, DENORMALS
from kernels.delta_rule.chunk import delta_rule_chunk


def delta_rule_native(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False,
                      chunk_size: int = CHUNK):
    compiled = native.without_autograd(q, k, v, beta, log_decay, initial_state)
    if compiled is None:
        return delta_rule_chunk(q, k, v, beta, log_decay=log_decay, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, chunk_size=chunk_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if native.scans(q.shape[-1], v.shape[-1]):
        o, state = compiled.delta_scan(q, k, v, beta, log_decay, scale, initial_state, DENORMALS.delta_floor)
    else:
        o, state = compiled.delta_chunk(q, k, v, beta, log_decay, scale, initial_state, chunk_size,
                                        DENORMALS.delta_floor)
    return o.to(v.dtype), (state if output_final_state else None)
