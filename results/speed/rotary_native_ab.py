"""RoPE through the compiled pass (`kernels.rotary.native`, the working tree's default on CPU without a gradient)
against the torch form it replaced (`backend="torch"`: a negation, a concatenation, two products and a sum), in one
process, for the students that rotate q and k (retnet; attention, the hybrids' attention layers): whole fp32 prefills
with the floor before every call, and decode (ms a token after a 1,024-token prompt, the teacher timed in the same
rounds), the sides alternating by round (`ab_rounds.py`); per-round old / new medians and quartiles.

    python results/speed/rotary_native_ab.py [rounds]
"""
import functools
import statistics
import sys

import torch
from ab_rounds import decode_sides, filled_decoder, paired, prefill_rounds, times_floor

import students.layers as layers
from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.surgery import build_student

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
new_rotary = layers.rotary
old_rotary = functools.partial(new_rotary, backend="torch")


def use(side):
    layers.rotary = old_rotary if side == "old" else new_rotary


teacher = embedded_shape_teacher()
floor = build_floor(teacher)
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in ("retnet", "attention")}
for T in (2048, 16384):
    ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    for name, model in students.items():
        with torch.no_grad():
            logits = {}
            for side in ("old", "new"):
                use(side)
                logits[side] = model(ids, use_cache=False).logits
        print(f"{name} T = {T}: logits max |old - new| {(logits['old'] - logits['new']).abs().max().item():.2e}")
        times = prefill_rounds(model, floor, ids, use, rounds if T == 2048 else max(rounds // 4, 4))
        print(f"  {name} prefill {T}: x floor old {times_floor(times, 'old'):.3f}, new {times_floor(times, 'new'):.3f}; "
              f"{paired(times['old'], times['new'])}")

ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    teacher_decoder = filled_decoder(teacher, ids)
    for name, model in students.items():
        same, times = decode_sides(model, teacher_decoder, ids, use, rounds)
        print(f"{name}: the 16th decoded token the same either side: {same}")
        print(f"  {name} decode ms/token: old {1e3 * statistics.median(times['old']):.3f}, "
              f"new {1e3 * statistics.median(times['new']):.3f}, teacher {1e3 * statistics.median(times['reference']):.3f}; "
              f"{paired(times['old'], times['new'])}; new / teacher "
              f"{statistics.median(n / t for n, t in zip(times['new'], times['reference'])):.3f}")
