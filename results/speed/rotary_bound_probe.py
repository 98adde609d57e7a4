"""The most that a one-pass RoPE could save in retnet's prefill: whole fp32 prefills (batch 1, no gradient,
use_cache=False) with RoPE skipped ("new": wrong outputs; timing only) against the model with RoPE's torch form
("old", the default before 260e4b7), the sides alternating by round, the floor before each call (`ab_rounds.py`);
medians of 25 rounds. And RoPE's torch form alone at the prefill's shape.

    python results/speed/rotary_bound_probe.py
"""
import functools
import statistics

import torch
from ab_rounds import prefill_rounds, timed

import students.layers as layers
from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from kernels.rotary import rotary
from students.surgery import build_student

set_steady()
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
floor = build_floor(teacher)
T = 2048
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
x = torch.randn(1, T, 256).view(1, T, 4, 64)
cos, sin = layers.rotary_angles(layers.rope_inv_freq(64, 10000.0), 0, T, "cpu")
with torch.no_grad():
    alone = [timed(rotary, x, cos, sin, backend="torch") for _ in range(50)]
print(f"torch rotary alone (1, {T}, 4, 64): {1e3 * statistics.median(alone[5:]):.3f} ms")

layers.rotary = functools.partial(rotary, backend="torch")
model = build_student(teacher, "retnet", init="random", seed=0).eval()
as_is = layers.Rotary.__call__


def use(side):
    layers.Rotary.__call__ = as_is if side == "old" else (lambda self, x, offset: x)


times = prefill_rounds(model, floor, ids, use, 25)
use("old")
f = statistics.median(times["floor_old"] + times["floor_new"])
a, n = statistics.median(times["old"]), statistics.median(times["new"])
print(f"retnet: floor {1e3 * f:.1f} ms, as is {1e3 * a:.1f} ({a / f:.3f}x), rotary skipped {1e3 * n:.1f} "
      f"({n / f:.3f}x), saving {1e3 * (a - n):.2f} ms")
