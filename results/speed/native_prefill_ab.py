"""Prefill A/B in one process: each student's recurrence as one compiled pass per layer (`kernels.native`, new)
against the chunked torch form (DISTILL_BENCH_NATIVE=0, old), alternating per round, with the floor and the
teacher timed in the same rounds (fp32, batch 1, no_grad, the embedded teacher's shape).

    python results/speed/native_prefill_ab.py [--rounds 11] [--lengths 2048,16384] [--students a,b]
"""
import argparse
import os
import statistics
import time

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from kernels import native
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=11)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--students", default="mamba,linear_attention,rwkv,retnet,gla,xlstm,metala,gated_deltanet")
args = parser.parse_args()
torch.set_num_threads(2)
assert native.module() is not None, "the extension could not be built here"


def use(mode):
    os.environ["DISTILL_BENCH_NATIVE"] = "1" if mode == "new" else "0"


teacher = load_teacher(str(EMBEDDED_TEACHER))
names = args.students.split(",")
students = {s: build_student(teacher, s, init="random", seed=0).eval() for s in names}
floor = build_floor(teacher)
for length in map(int, args.lengths.split(",")):
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    times = {key: [] for key in ["floor", "teacher", *((s, m) for s in names for m in ("old", "new"))]}
    with torch.no_grad():
        logits = {}
        for mode in ("old", "new"):
            use(mode)
            logits[mode] = {s: m(ids).logits for s, m in students.items()}
        for r in range(args.rounds + 1):  # round 0 warms up
            calls = [("floor", floor), ("teacher", teacher)]
            for s, m in students.items():
                calls += [((s, mode), m) for mode in (("old", "new") if r % 2 else ("new", "old"))]
            for key, model in calls:
                if isinstance(key, tuple):
                    use(key[1])
                start = time.perf_counter()
                model(ids)
                if r:
                    times[key].append(time.perf_counter() - start)
    use("new")
    floor_ms = statistics.median(times["floor"]) * 1e3
    teacher_ms = statistics.median(times["teacher"]) * 1e3
    print(f"prefill {length:,} tokens, medians of {args.rounds} rounds: floor {floor_ms:.1f} ms, "
          f"teacher {teacher_ms:.1f} ms ({teacher_ms / floor_ms:.2f} x floor)")
    for s in names:
        old, new = times[s, "old"], times[s, "new"]
        ratios = sorted(a / b for a, b in zip(old, new))
        diff = (logits["new"][s] - logits["old"][s]).abs().max().item()
        print(f"  {s:16} torch chunk {statistics.median(old) * 1e3:.1f} ms ({statistics.median(old) * 1e3 / floor_ms:.2f} x floor)"
              f"  compiled {statistics.median(new) * 1e3:.1f} ms ({statistics.median(new) * 1e3 / floor_ms:.2f} x floor)"
              f"  old/new per round median {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]"
              f"  logits max |new - old| {diff:.1e}", flush=True)
