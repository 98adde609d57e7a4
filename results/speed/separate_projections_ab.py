"""rwkv's k, v, r and g projections in a no-gradient prefill: one batched product over a stack of their weights built
for each call (`students.layers.batched_linear`, the tree's) against four products into one preallocated output (no
weight stack), in one process: whole fp32 prefills (batch 1, use_cache=False, as bench.throughput) with the floor
before every call, the sides' order alternating by round (`ab_rounds.py`); per-round old / new medians and quartiles.

    python results/speed/separate_projections_ab.py [rounds] [length]
"""
import sys

import torch
from ab_rounds import paired, prefill_rounds, times_floor

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
times = prefill_rounds(model, floor, ids, use, rounds)
print(f"  rwkv prefill {T}: x floor old {times_floor(times, 'old'):.3f}, new {times_floor(times, 'new'):.3f}; "
      f"{paired(times['old'], times['new'])}")
