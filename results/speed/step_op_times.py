"""Probe: the run's default end_to_end step (bf16 autocast where the CPU has bf16 instructions), op by op: every aten
call's wall time through a dispatch mode (no profiler, whose per-op overhead inflates short CPU ops several-fold on
these machines), summed per op and per op and input shapes; the products' achieved GFLOP/s; and torch's batched
fp32 product at the chunk forms' shape against one dense product of the same depth, timed alone.

    python results/speed/step_op_times.py retnet
"""
import collections
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.provenance import header

STEPS = 3


class OpTimes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds, self.calls = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        shapes = tuple((tuple(a.shape), str(a.dtype).removeprefix("torch.")) for a in args if isinstance(a, torch.Tensor))
        for key in (func.overloadpacket.__name__, (func.overloadpacket.__name__, shapes)):
            self.seconds[key] += elapsed
            self.calls[key] += 1
        return out


def median_ms(fn, repeats=30):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
student = students.build_student(teacher, sys.argv[1], "qkv_copy", seed=0)
bf16 = use_bf16("auto", torch.device("cpu"))
step = step_fn("end_to_end", student, teacher, batch, bf16)
print(header())
print(f"{sys.argv[1]} end_to_end, batch 8 x 512, bf16 autocast {bf16}; per step: the median of {STEPS} plain steps after 5 "
      f"warm-ups, then the mean of {STEPS} under the timing mode")
plain_ms = median_ms(step, repeats=STEPS)
ops = OpTimes()
with ops:
    for _ in range(STEPS):
        step()
total = sum(v for k, v in ops.seconds.items() if isinstance(k, str)) / STEPS * 1e3
calls = sum(v for k, v in ops.calls.items() if isinstance(k, str)) // STEPS
print(f"step without the mode {plain_ms:.0f} ms (median); under it {calls} aten calls summing to {total:.0f} ms")
print("\nby op (ms a step, calls a step):")
for name, seconds in sorted(((k, v) for k, v in ops.seconds.items() if isinstance(k, str)), key=lambda kv: -kv[1])[:16]:
    print(f"  {name:46s} {seconds / STEPS * 1e3:7.1f} {ops.calls[name] // STEPS:5d}")
print("\nproducts by shape (ms a step, calls a step, GFLOP/s):")
for (name, shapes), seconds in sorted(((k, v) for k, v in ops.seconds.items() if isinstance(k, tuple)), key=lambda kv: -kv[1]):
    if name not in ("mm", "bmm") or len(shapes) != 2:
        continue
    (a, dtype), (b, _) = shapes
    flops = 2 * a[-2] * a[-1] * b[-1] * (a[0] if len(a) == 3 else 1) * ops.calls[(name, shapes)]
    print(f"  {name} {a} x {b} {dtype:8s} {seconds / STEPS * 1e3:6.1f} {ops.calls[(name, shapes)] // STEPS:4d} "
          f"{flops / seconds / 1e9:5.0f}")
print("\nthe other ops by shape, the 20 longest (ms a step, calls a step):")
others = [(k, v) for k, v in ops.seconds.items() if isinstance(k, tuple) and k[0] not in ("mm", "bmm", "baddbmm_")]
for (name, shapes), seconds in sorted(others, key=lambda kv: -kv[1])[:20]:
    described = " ".join(f"{tuple(shape)}{'' if dtype == 'float32' else ' ' + dtype}" for shape, dtype in shapes)
    print(f"  {name:22s} {described[:90]:90s} {seconds / STEPS * 1e3:6.1f} {ops.calls[(name, shapes)] // STEPS:4d}")
products = sum(v for k, v in ops.seconds.items() if isinstance(k, str) and k in ("mm", "bmm", "baddbmm_"))
attention = sum(v for k, v in ops.seconds.items() if isinstance(k, str) and "scaled_dot_product" in k)
print(f"\nproducts {products / STEPS * 1e3:.0f} ms, teacher attention on sdpa {attention / STEPS * 1e3:.0f} ms (the compiled "
      f"attention is not an aten call: the mode does not see it), everything else "
      f"{total - (products + attention) / STEPS * 1e3:.0f} ms (the mode's own cost included)")

a, b = torch.randn(256, 64, 64), torch.randn(256, 64, 64)
x, w = torch.randn(256 * 64, 64), torch.randn(64, 64)
batched, dense = median_ms(lambda: torch.bmm(a, b)), median_ms(lambda: x @ w)
flops = 2 * 256 * 64 * 64 * 64
print(f"\nalone, fp32, the same 67 MFLOP: bmm 256 x (64 x 64 x 64) {batched:.2f} ms ({flops / batched / 1e6:.0f} GFLOP/s), "
      f"mm (16384 x 64) x (64 x 64) {dense:.2f} ms ({flops / dense / 1e6:.0f} GFLOP/s)")
ab, bb = a.bfloat16(), b.bfloat16()
batched_bf16 = median_ms(lambda: torch.bmm(ab, bb))
print(f"alone, bf16: bmm 256 x (64 x 64 x 64) {batched_bf16:.2f} ms ({flops / batched_bf16 / 1e6:.0f} GFLOP/s)")
