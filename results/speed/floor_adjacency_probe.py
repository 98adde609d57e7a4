"""Does timing the floor right next to each student narrow the spread of the per-round prefill ratios?

Two schedules alternate round by round in one process (fp32, batch 1, no_grad, the embedded teacher's shape):
  plain     floor, s1, s2, ..., s8 (every other round reversed): the throughput benchmark's round robin, where a
            student's ratio divides by the one floor call of its round, up to eight calls away;
  adjacent  floor, s1, floor, s2, ..., s8, floor (every other round reversed): each student's ratio divides by the
            mean of the two floor calls on either side of it.
Printed per student and length: the median of the per-round ratios and their interquartile range under each.

    python results/speed/floor_adjacency_probe.py [--rounds 7] [--lengths 2048,16384]
"""
import argparse
import functools
import statistics
import time

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from students.registry import available
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=7)
parser.add_argument("--lengths", default="2048,16384")
args = parser.parse_args()
torch.set_num_threads(2)

teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher).eval()
names = [n for n in available() if n != "attention"]
models = {name: build_student(teacher, name, init="random", seed=0).eval() for name in names}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quartiles(values):
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q3 - q1


for length in map(int, args.lengths.split(",")):
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    calls = {name: functools.partial(m, ids) for name, m in models.items()}
    run_floor = functools.partial(floor, ids)
    ratios = {(schedule, name): [] for schedule in ("plain", "adjacent") for name in names}
    with torch.no_grad():
        run_floor()
        for fn in calls.values():  # warm-up
            fn()
        for round_index in range(2 * args.rounds):
            order = names if (round_index // 2) % 2 == 0 else names[::-1]
            if round_index % 2 == 0:  # plain
                times = {}
                sequence = ["floor", *order] if order is names else [*order, "floor"]
                for name in sequence:
                    times[name] = timed(run_floor if name == "floor" else calls[name])
                for name in names:
                    ratios["plain", name].append(times[name] / times["floor"])
            else:  # adjacent
                previous = timed(run_floor)
                for name in order:
                    t = timed(calls[name])
                    following = timed(run_floor)
                    ratios["adjacent", name].append(t / ((previous + following) / 2))
                    previous = following
    print(f"length {length}, {args.rounds} rounds of each schedule")
    for name in names:
        (pm, piqr), (am, aiqr) = quartiles(ratios["plain", name]), quartiles(ratios["adjacent", name])
        print(f"  {name:16} plain {pm:.3f} (IQR {piqr:.3f})   adjacent {am:.3f} (IQR {aiqr:.3f})", flush=True)
