"""A/B in one process: a distillation step with the fused loss's per-chunk softmax work as the compiled row pass
(`kernels/native` distill_rows, the `native` backend, default on CPU) against the torch chunk form, alternating
steps (the other side first in odd rounds).

    python results/speed/distill_rows_ab.py [--students all] [--stage end_to_end] [--dtype auto|bf16|fp32] [--rounds 6]

Prints, per student, each side's median step time and the median and range of the per-round ratios (torch / native).
"""
import argparse
import statistics
import time

import torch

import kernels.distill_loss as distill_loss
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.distill_speed import step_fn
from bench.provenance import cpu_has_bf16_kernels, machine
from kernels.distill_loss.chunk import chunk_math_native, chunk_math_torch
from students.registry import STUDENTS
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="all")
parser.add_argument("--stage", default="end_to_end")
parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
parser.add_argument("--rounds", type=int, default=6)
args = parser.parse_args()
torch.set_num_threads(2)
bf16 = cpu_has_bf16_kernels() if args.dtype == "auto" else args.dtype == "bf16"
info = machine()
print(f"{info['device_name']} ({info['cpu_capability']}, bf16 kernels {info['cpu_bf16_kernels']}), torch {info['torch']}, "
      f"commit {info['commit']}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; {args.stage}, "
      f"{'bf16 autocast' if bf16 else 'fp32'}, batch 8 x 512, {args.rounds} rounds")
rows, width = 256, 4096  # one CPU chunk of the embedded teacher's logits (default_chunk_size)
g = torch.Generator().manual_seed(0)
chunk_s, chunk_z = torch.randn(rows, width, generator=g), torch.randn(rows, width, generator=g)
chunk_y, work = torch.randint(0, width, (rows,), generator=g), torch.empty(rows, width)
scratch = (torch.empty(rows, width), torch.empty(rows, width))
per_chunk = {"torch": [], "native": []}
for r in range(7):
    for side, fn in (("torch", chunk_math_torch), ("native", chunk_math_native))[::1 if r % 2 else -1]:
        start = time.perf_counter()
        for _ in range(20):
            work.copy_(chunk_s)
            fn(work, chunk_z, chunk_y, 1.0, 1e-4, 1e-4, True, scratch)
        per_chunk[side].append((time.perf_counter() - start) / 20)
print(f"  one chunk's softmax work ({rows} x {width}, with the copy into the buffer): torch "
      f"{1e3 * statistics.median(per_chunk['torch'][1:]):.2f} ms, native {1e3 * statistics.median(per_chunk['native'][1:]):.2f} ms")
teacher = load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
native_form, torch_form = distill_loss.BACKENDS["native"], distill_loss.BACKENDS["chunk"]
names = [n for n in STUDENTS if n != "attention"] if args.students == "all" else args.students.split(",")
for name in names:
    torch.manual_seed(0)
    student = build_student(teacher, name, "qkv_copy", seed=0)
    step = step_fn(args.stage, student, teacher, batch, bf16)
    step()
    times = {"native": [], "torch": []}
    for r in range(args.rounds):
        for side in (("native", "torch") if r % 2 == 0 else ("torch", "native")):
            distill_loss.BACKENDS["native"] = native_form if side == "native" else torch_form
            start = time.perf_counter()
            step()
            times[side].append(time.perf_counter() - start)
    distill_loss.BACKENDS["native"] = native_form
    ratios = [a / b for a, b in zip(times["torch"], times["native"])]
    print(f"  {name:16s} torch {statistics.median(times['torch']):.3f} s  native {statistics.median(times['native']):.3f} s"
          f"  torch / native per round {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
