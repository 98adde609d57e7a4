"""RoPE through the compiled pass (`kernels.rotary.native`, the working tree's default on CPU without a gradient)
against the torch form it replaced (`backend="torch"`: a negation, a concatenation, two products and a sum), in one
process, for the students that rotate q and k (retnet; attention, the hybrids' attention layers): whole fp32 prefills
(batch 1, no gradient, use_cache=False, as bench.throughput) with the floor before every call, and decode (ms a token
after a 1,024-token prompt, 32 tokens a call, the teacher timed in the same rounds), the sides' order alternating by
round; per-round old / new medians and quartiles.

    python results/speed/rotary_native_ab.py [rounds]
"""
import functools
import statistics
import sys
import time

import torch

import students.layers as layers
from bench.perf.heap import set_steady
from bench.perf.throughput import _Decoder, build_floor, embedded_shape_teacher
from bench.provenance import header
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
new_rotary = layers.rotary
old_rotary = functools.partial(new_rotary, backend="torch")


def use(side):
    layers.rotary = old_rotary if side == "old" else new_rotary


def summary(old, new):
    ratios = [o / n for o, n in zip(old, new)]
    q = statistics.quantiles(ratios, n=4)
    return f"old / new per round {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})"


teacher = embedded_shape_teacher()
floor = build_floor(teacher)
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in ("retnet", "attention")}
for T in (2048, 16384):
    ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    n = rounds if T == 2048 else max(rounds // 4, 4)
    for name, model in students.items():
        with torch.no_grad():
            logits = {}
            for side in ("old", "new"):
                use(side)
                logits[side] = model(ids, use_cache=False).logits
            print(f"{name} T = {T}: logits max |old - new| {(logits['old'] - logits['new']).abs().max().item():.2e}")
            times = {"floor_old": [], "floor_new": [], "old": [], "new": []}
            for r in range(n + 1):  # the first round warms up
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
        print(f"  {name} prefill {T}: x floor old {statistics.median(old):.3f}, new {statistics.median(new):.3f}; "
              f"{summary(times['old'][1:], times['new'][1:])}")

ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out = teacher(ids, use_cache=True)
    teacher_decoder = _Decoder(teacher, out.past_key_values, ids[:, -1:], 32)
    for name, model in students.items():
        decoders, tokens = {}, {}
        for side in ("old", "new"):
            use(side)
            out = model(ids, use_cache=True)
            decoders[side] = _Decoder(model, getattr(out, _CACHE_FIELD), ids[:, -1:], 32)
            decoders[side].restart()
            decoders[side].run(16)
            tokens[side] = decoders[side].token
        print(f"{name}: the 16th decoded token the same either side: {bool(torch.equal(tokens['old'], tokens['new']))}")
        times = {"old": [], "new": [], "teacher": []}
        for r in range(rounds):
            for side in (("old", "new", "teacher") if r % 2 == 0 else ("teacher", "new", "old")):
                decoder = teacher_decoder if side == "teacher" else decoders[side]
                if side != "teacher":
                    use(side)
                decoder.warm_restart()
                start = time.perf_counter()
                decoder()
                times[side].append((time.perf_counter() - start) / 32)
        print(f"  {name} decode ms/token: old {1e3 * statistics.median(times['old']):.3f}, "
              f"new {1e3 * statistics.median(times['new']):.3f}, teacher {1e3 * statistics.median(times['teacher']):.3f}; "
              f"{summary(times['old'], times['new'])}; new / teacher "
              f"{statistics.median(n / t for n, t in zip(times['new'], times['teacher'])):.3f}")
