"""Probe: the teacher's causal attention at the distillation batch (8 x 512 tokens, 4 query heads, 2 key-value
heads, head size 64) in fp32 and bf16: torch's sdpa (its CPU flash kernel), sdpa's math backend, and an explicit
form (the two query heads of a key-value head stacked as rows: one product, a masked fp32 softmax, one product);
calls interleaved, the largest difference to flash fp32 printed first.

    python results/speed/sdpa_dtype_probe.py
"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
B, HQ, HKV, T, D = 8, 4, 2, 512, 64
q, k, v = torch.randn(B, HQ, T, D), torch.randn(B, HKV, T, D), torch.randn(B, HKV, T, D)
mask = torch.full((T, T), float("-inf")).triu(1)


def flash(dtype):
    qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)
    return lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)


def math_backend(dtype):
    qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)

    def call():
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
    return call


def explicit(dtype):
    qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)
    group = HQ // HKV

    def call():
        scores = torch.matmul(qq.view(B, HKV, group * T, D), kk.transpose(-1, -2)).float().mul_(D ** -0.5)
        probs = torch.softmax(scores.view(B, HKV, group, T, T).add_(mask), -1).to(dtype)
        return torch.matmul(probs.view(B, HKV, group * T, T), vv).view(B, HQ, T, D)
    return call


calls = {f"{name} {label}": make(dtype) for name, make in (("flash", flash), ("math", math_backend),
                                                           ("explicit", explicit))
         for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
reference = calls["flash fp32"]()
for name, fn in calls.items():
    print(f"{name:14s} max |difference| {(fn().float() - reference).abs().max().item():.2e}")
times = {name: [] for name in calls}
for _ in range(9):
    for name, fn in calls.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
for name, t in times.items():
    print(f"{name:14s} {statistics.median(t) * 1e3:.2f} ms")
