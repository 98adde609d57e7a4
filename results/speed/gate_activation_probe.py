"""What metala's and gla's decay gates cost in torch ops at a 2,048-token prefill's shape, one layer (1, 2,048, 4, 64)
fp32, 2 threads, medians of 300 calls: metala's log α = logsigmoid(x) / 16 and key 1 − α = −expm1(log α) as
written in its featurize (gla's gate is the first half), variants in place and through softplus, and single passes
for scale (logsigmoid alone, sigmoid alone); the variants' largest differences from the form as written.

    python results/speed/gate_activation_probe.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from bench.provenance import header

print(header())
torch.set_num_threads(2)
x = torch.randn(1, 2048, 4, 64, generator=torch.Generator().manual_seed(0)) * 3


def median_us(fn, calls: int = 300) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def as_written():
    log_decay = F.logsigmoid(x) / 16
    return log_decay, -torch.expm1(log_decay)


def in_place():
    log_decay = F.logsigmoid(x).div_(16)
    return log_decay, torch.expm1(log_decay).neg_()


def through_softplus():
    log_decay = F.softplus(-x).div_(-16)
    return log_decay, torch.expm1(log_decay).neg_()


forms = {"metala's gate as written (gla's: its first line)": as_written, "in place": in_place,
         "through softplus, in place": through_softplus, "logsigmoid alone": lambda: F.logsigmoid(x),
         "sigmoid alone": lambda: torch.sigmoid(x)}
reference = as_written()
for name, fn in forms.items():
    out = fn()
    gap = (max((a - b).abs().max().item() for a, b in zip(reference, out)) if isinstance(out, tuple) else None)
    print(f"{name:50} {median_us(fn):7.1f} µs" + ("" if gap is None else f"  (max |difference| {gap:.1e})"))
