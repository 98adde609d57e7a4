"""Probe: what a process's first training step costs beyond a steady one, and what a second run in the same process
(as `bench.sweep` runs the grid, one process for all its runs) pays again.

    python results/speed/first_step_probe.py [--students xlstm,rwkv] [--stages attention_output,end_to_end]
    DISTILL_BENCH_COMPILE=0 python results/speed/first_step_probe.py ...   # the torch forms, nothing compiled

For each student: a fresh qkv_copy student, each stage's first steps in order (the first stage's first step is the
process's first compiled call: dynamo traces the training forms, inductor loads them from its cache or compiles
them), then a second fresh student of the same kind, as the sweep's next run of that student builds, and its first
steps again. Steps as a run takes them: the run's dtype (`auto`), its optimiser, the embedded teacher, (8, 512)
batches. Prints seconds per step; the verdict is the first step's excess over the median of the rest.
"""
import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill import stages as stage_lib
from bench.distill.loop import adamw
from bench.provenance import cpu_has_bf16_kernels, machine

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="xlstm,rwkv")
parser.add_argument("--stages", default="attention_output,hidden_alignment,end_to_end")
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()

process_start = time.perf_counter()
torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
bf16 = cpu_has_bf16_kernels()
info = machine()
print(f"# {info['device_name']} ({info.get('cpu_capability')}), torch {torch.__version__}, commit "
      f"{info['commit']}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; bf16 autocast {bf16}; "
      f"DISTILL_BENCH_COMPILE={os.environ.get('DISTILL_BENCH_COMPILE', '1')}; teacher loaded "
      f"{time.perf_counter() - process_start:.1f} s after start")


def steps(name: str, stage: str) -> list[float]:
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    module = stage_lib.StageModule(stage_lib.STAGES[stage], student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = adamw(params, 1e-6, 0.01)
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with stage_lib.teacher_attention([teacher], stage_lib.STAGES[stage].needs_attention_weights), \
                (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


for name in args.students.split(","):
    for run in ("first run", "second run"):
        for stage in args.stages.split(","):
            s = steps(name, stage)
            rest = statistics.median(s[1:])
            print(f"  {name:16s} {run:11s} {stage:17s} first step {s[0]:6.3f} s, then {rest:.3f} s "
                  f"(excess {s[0] - rest:+.2f} s); steps {' '.join(f'{x:.3f}' for x in s)}", flush=True)
