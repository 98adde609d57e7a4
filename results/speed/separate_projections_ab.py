"""rwkv's k, v, r and g projections in a no-gradient prefill: one batched product over a stack of their weights built
for each call (`students.layers.batched_linear`, the tree's) against four products into one preallocated output (no
weight stack), in one process: whole fp32 prefills (batch 1, use_cache=False, as bench.throughput) with the floor
before every call, the sides' order alternating by round; per-round old / new medians and quartiles.

    python results/speed/separate_projections_ab.py [rounds] [length]
"""
import statistics
import sys
import time

import torch

import students.mixers.rwkv as rwkv
from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.layers import _weight
from students.surgery import build_student

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
T = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
batched = rwkv.batched_linear


def separate(xs, linears):
    n, B, T, D = xs.shape
    out = xs.new_empty(n, B * T, linears[0].out_features)
    for i, linear in enumerate(linears):
        torch.mm(xs[i].reshape(B * T, D), _weight(linear).t(), out=out[i])
    return out.view(n, B, T, -1)


def use(side):
    rwkv.batched_linear = batched if side == "old" else separate


teacher = embedded_shape_teacher()
floor = build_floor(teacher)
model = build_student(teacher, "rwkv", init="random", seed=0).eval()
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    logits = {}
    for side in ("old", "new"):
        use(side)
        logits[side] = model(ids, use_cache=False).logits
    print(f"rwkv T = {T}: logits max |old - new| {(logits['old'] - logits['new']).abs().max().item():.2e}")
    times = {"floor_old": [], "floor_new": [], "old": [], "new": []}
    for r in range(rounds + 1):
        for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
            use(side)
            start = time.perf_counter()
            floor(ids, use_cache=False)
            times[f"floor_{side}"].append(time.perf_counter() - start)
            start = time.perf_counter()
            model(ids, use_cache=False)
            times[side].append(time.perf_counter() - start)
old = [t / f for t, f in zip(times["old"][1:], times["floor_old"][1:])]
new = [t / f for t, f in zip(times["new"][1:], times["floor_new"][1:])]
ratios = [o / n for o, n in zip(times["old"][1:], times["new"][1:])]
q = statistics.quantiles(ratios, n=4)
print(f"  rwkv prefill {T}: x floor old {statistics.median(old):.3f}, new {statistics.median(new):.3f}; old / new per "
      f"round {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")
