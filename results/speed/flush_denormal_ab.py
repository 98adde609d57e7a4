"""Probe: a distillation step with CPU denormals flushed to zero (`torch.set_flush_denormal(True)`) against
without, alternating in one process (the flag is a thread-local FTZ/DAZ switch, so it toggles between steps).

    python results/speed/flush_denormal_ab.py [--students gla,xlstm,gated_deltanet] [--stage end_to_end] [--dtype bf16]

Prints, per student, the median step time each way over interleaved rounds and the median of per-round ratios.
"""
import argparse
import statistics
import time

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.distill_speed import step_fn
from bench.provenance import machine
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="gla,xlstm,gated_deltanet")
parser.add_argument("--stage", default="end_to_end")
parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
parser.add_argument("--rounds", type=int, default=6)
args = parser.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
info = machine()
print(f"{info['device_name']} ({info['cpu_capability']}, bf16 kernels {info['cpu_bf16_kernels']}), torch {info['torch']}, "
      f"commit {info['commit']}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; {args.stage}, {args.dtype}, "
      f"batch 8 x 512, {args.rounds} rounds")
teacher = load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
for name in args.students.split(","):
    student = build_student(teacher, name, "qkv_copy", seed=0)
    step = step_fn(args.stage, student, teacher, batch, args.dtype == "bf16")
    step()
    times = {False: [], True: []}
    for r in range(args.rounds):
        for flush in ((False, True) if r % 2 == 0 else (True, False)):
            torch.set_flush_denormal(flush)
            start = time.perf_counter()
            step()
            times[flush].append(time.perf_counter() - start)
    torch.set_flush_denormal(False)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"  {name:16s} default {statistics.median(times[False]):.3f} s  flushed {statistics.median(times[True]):.3f} s  "
          f"default / flushed per round {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
