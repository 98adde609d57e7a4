"""Probe: where a student's prefill time goes, phase by phase (fp32, batch 1, no_grad, the embedded teacher's shape).

    python results/speed/phase_profile.py [--students mamba,rwkv,metala,gated_deltanet] [--length 16384] [--rounds 5]

Wraps each mixer's featurize / mix / finish_core / readout, the MLPs, the norms and the LM head with wall-clock
timers (CPU calls are synchronous) and prints medians over the rounds after a warm-up, summed over layers, next to
the floor's whole forward timed in the same rounds.
"""
import argparse
import collections
import statistics
import time

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="mamba,rwkv,metala,gated_deltanet")
parser.add_argument("--length", type=int, default=16384)
parser.add_argument("--rounds", type=int, default=5)
args = parser.parse_args()
torch.set_num_threads(2)
teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher)
ids = torch.randint(0, 4096, (1, args.length), generator=torch.Generator().manual_seed(0))
spent = collections.defaultdict(float)


def timed(name, fn):
    def wrapper(*a, **k):
        start = time.perf_counter()
        out = fn(*a, **k)
        spent[name] += time.perf_counter() - start
        return out
    return wrapper


for name in args.students.split(","):
    student = build_student(teacher, name, init="random", seed=0).eval()
    for module in student.modules():
        kind = type(module).__name__
        if hasattr(module, "featurize") and hasattr(module, "readout"):
            for phase in ("featurize", "mix", "finish_core", "readout"):
                setattr(module, phase, timed(phase, getattr(module, phase)))
        elif kind.endswith("MLP") or kind.endswith("RMSNorm") and "Head" not in kind:
            module.forward = timed(kind, module.forward)
    student.lm_head.forward = timed("lm_head", student.lm_head.forward)
    rows = collections.defaultdict(list)
    with torch.no_grad():
        for r in range(args.rounds + 1):
            start = time.perf_counter()
            floor(ids)
            floor_s = time.perf_counter() - start
            spent.clear()
            start = time.perf_counter()
            student(ids)
            total = time.perf_counter() - start
            if r:
                rows["floor (whole)"].append(floor_s)
                rows["student (whole)"].append(total)
                for key, value in spent.items():
                    rows[key].append(value)
                rows["rest"].append(total - sum(spent.values()))
    print(f"{name} at {args.length} tokens, medians of {args.rounds} (ms):")
    for key, values in rows.items():
        print(f"  {key:18s} {1e3 * statistics.median(values):9.1f}")
