"""Causal attention over a prompt on CPU as one compiled call (`kernels/native/sequence_forward.cpp`): per key-value
head its keys and values widened to fp32 once and shared by its query heads; per block of 64 queries the scores, the
masked softmax and P V, both products read 256 keys at a time so a tile of keys or values stays in L2. About 2×
torch's CPU flash kernel at the distillation batch (`results/speed/teacher_attention_ab.txt`), less as sequences grow:
a block's scores (64 × T floats) leave L2, and from 16,384 tokens sdpa's kernel, which tiles the scores too, is as
fast or faster (`results/speed/attention_key_tiles_ab.txt`, `causal_attention_lengths.txt`), so longer sequences
than `MAX_LENGTH` take sdpa. Under autocast the inputs are cast to its dtype first, as sdpa's are. No backward: where
a gradient is to be recorded, off CPU, for dtypes other than fp32 and bf16, or where the extension cannot be built,
sdpa."""
from __future__ import annotations

import torch

from kernels import native
from kernels.causal_attention.torch_form import causal_attention_torch

MAX_LENGTH = 8192  # the longest sequence the compiled call takes: 1.04-1.06x sdpa there on the AVX2 EPYC in fp32 (level in
# the whole teacher's forward), 0.96-0.97x at 16,384


def causal_attention_compiled(q, k, v, scale):
    """The compiled call itself (CPU, no autograd, q, k, v of one dtype, fp32 or bf16)."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return native.module().causal_attention(q, k, v, scale)


def causal_attention_native(q, k, v, scale):
    compiled = native.without_autograd(q, k, v) if q.shape[2] <= MAX_LENGTH else None
    if compiled is not None and torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = (x.to(dtype) for x in (q, k, v))
    if compiled is None or q.dtype not in (torch.float32, torch.bfloat16) or not q.dtype == k.dtype == v.dtype:
        return causal_attention_torch(q, k, v, scale)
    return causal_attention_compiled(q, k, v, scale)
