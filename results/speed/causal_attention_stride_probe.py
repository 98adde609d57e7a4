"""Probe: the compiled causal attention (`kernels.causal_attention`, native) against torch's sdpa by length, lengths
on and off powers of two (the keys' and scores' row stride is T rounded up to 32 floats: at a power of two every row
of a product's column block falls in one L1 set), fp32 and bf16 inputs in transformers' layout (4 query and 2
key-value heads of 64), medians of 9 calls (3 from 4,096 tokens).

    python results/speed/causal_attention_stride_probe.py
"""
import torch
import torch.nn.functional as F

from bench.perf.timing import time_call
from bench.provenance import header
from kernels.causal_attention.native import causal_attention_compiled


def median_ms(fn, repeats):
    return time_call(fn, repeats, warmup=1)["median_s"] * 1e3


print(header())
torch.set_num_threads(2)
for dtype in (torch.float32, torch.bfloat16):
    for B, T in [(8, 512), (4, 1024), (3, 1536), (2, 2048), (1, 4096), (1, 8192)]:
        q = torch.randn(B, T, 4, 64).transpose(1, 2).to(dtype)
        k, v = (torch.randn(B, T, 2, 64).transpose(1, 2).to(dtype) for _ in range(2))
        repeats = 9 if T < 4096 else 3
        sdpa = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), repeats)
        compiled = median_ms(lambda: causal_attention_compiled(q, k, v, 0.125), repeats)
        print(f"{str(dtype)[6:]:9s} B={B} T={T:6d}: sdpa {sdpa:8.1f} ms, compiled {compiled:8.1f} ms, {sdpa / compiled:.2f}x",
              flush=True)
