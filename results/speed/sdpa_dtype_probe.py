"""Probe: the teacher's causal attention at the distillation batch (8 x 512 tokens, 4 query heads, 2 key-value
heads, head size 64), torch's sdpa in fp32 and bf16, with and without grouped-query broadcasting, calls interleaved.

    python results/speed/sdpa_dtype_probe.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
q, k, v = torch.randn(8, 4, 512, 64), torch.randn(8, 2, 512, 64), torch.randn(8, 2, 512, 64)


def call(dtype, gqa=True):
    qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)
    if not gqa:
        kk, vv = kk.repeat_interleave(2, 1), vv.repeat_interleave(2, 1)
    return lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=gqa)


calls = {"fp32": call(torch.float32), "bf16": call(torch.bfloat16),
         "fp32, heads repeated": call(torch.float32, False), "bf16, heads repeated": call(torch.bfloat16, False)}
for fn in calls.values():
    fn()
times = {name: [] for name in calls}
for _ in range(9):
    for name, fn in calls.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
for name, t in times.items():
    print(f"{name:22s} {statistics.median(t) * 1e3:.2f} ms")
