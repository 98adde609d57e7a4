"""Whole-model prefill A/B in one process: the compiled passes as they were at --old (the extension built from that
revision, the read-out norm in its torch form) against today's (this tree's extension, the compiled read-out norm),
alternating per round with the floor timed in the same rounds (fp32, batch 1, no_grad, the embedded teacher's shape).
For a stop's changes together, when each alone is below a forward's noise.

    python results/speed/cumulative_ab.py --old 2044ec4 [--rounds 15] [--lengths 2048,16384] [--students ...]
"""
import argparse
import functools

import torch

import students.layers as layers
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from kernels.head_norm import head_norm
from native_revision import modules, summary, time_alternating, use_module  # beside this file
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--old", required=True)
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--students", default="rwkv,gla,metala,gated_deltanet")
args = parser.parse_args()
torch.set_num_threads(2)
extensions = modules(args.old)
variants = {"old": (extensions["old"], "torch"), "new": (extensions["new"], "native")}


def use(variant):
    extension, norm_backend = variant
    use_module(extension)
    layers.head_norm = functools.partial(head_norm, backend=norm_backend)


teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher)
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in args.students.split(",")}
for length in map(int, args.lengths.split(",")):
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name, model in students.items():
            logits = []
            for variant in variants.values():
                use(variant)
                logits.append(model(ids).logits)
            print(f"{name} {length}: largest |old - new| logit {(logits[0] - logits[1]).abs().max().item():.2e}")
        calls = {name: functools.partial(m, ids) for name, m in {"floor": floor, **students}.items()}
        times = time_alternating(calls, variants, use, args.rounds)
    print(f"{length} floor: " + summary(times, "floor").split(": ", 1)[1])
    for name in students:
        print(f"{length} " + summary(times, name))
        for variant in variants:
            ratios = sorted(a / b for a, b in zip(times[name, variant], times["floor", variant]))
            print(f"    {variant} × floor (per-round median) {ratios[len(ratios) // 2]:.3f}")
