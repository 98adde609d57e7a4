"""Probe: the compiled causal attention (`kernels.causal_attention`, native) against torch's sdpa (CPU flash kernel)
alone, by length, fp32 and bf16 inputs in transformers' layout (4 query and 2 key-value heads of 64), medians; the
compiled call's block of scores (64 × T floats) leaves L2 as T grows, where sdpa's tiles do not.

    python results/speed/causal_attention_lengths_probe.py
"""
import torch
import torch.nn.functional as F

from bench.perf.timing import time_call
from bench.provenance import header
from kernels.causal_attention.native import causal_attention_compiled


def median_ms(fn, repeats):
    return time_call(fn, repeats, warmup=1)["median_s"] * 1e3


print(header())
for dtype in (torch.float32, torch.bfloat16):
    for B, T in [(8, 512), (2, 2048), (1, 4096), (1, 8192), (1, 16384)]:
        q = torch.randn(B, T, 4, 64).transpose(1, 2).to(dtype)
        k, v = (torch.randn(B, T, 2, 64).transpose(1, 2).to(dtype) for _ in range(2))
        repeats = 7 if T <= 4096 else 3
        sdpa = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), repeats)
        compiled = median_ms(lambda: causal_attention_compiled(q, k, v, 0.125), repeats)
        print(f"{str(dtype)[6:]:9s} B={B} T={T:6d}: sdpa {sdpa:8.1f} ms, compiled {compiled:8.1f} ms, {sdpa / compiled:.2f}x",
              flush=True)
