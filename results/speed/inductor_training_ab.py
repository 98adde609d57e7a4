"""A/B: students' training steps with the torch forms compiled by inductor for training (`kernels._inductor`: the
token shift and the read-out norm) against the plain torch forms (DISTILL_BENCH_COMPILE=0), alternating step by step
in one process, bf16 autocast where the CPU has bf16 instructions (as `--dtype auto`), batch 8 x 512, qkv_copy;
medians after 2 warm-up rounds (the first compiles).

    python results/speed/inductor_training_ab.py [--students gated_deltanet,mamba] [--stages end_to_end] [--rounds 6]
"""
import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill import stages as stage_lib
from bench.distill.loop import adamw
from bench.provenance import cpu_has_bf16_kernels, machine
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="gated_deltanet,mamba,gla,retnet,rwkv")
parser.add_argument("--stages", default="end_to_end")
parser.add_argument("--rounds", type=int, default=6)
args = parser.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
info = machine()
bf16 = cpu_has_bf16_kernels()
print(f"{info['device_name']} ({info['cpu_capability']}), torch {info['torch']}, commit {info['commit']}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; bf16 autocast: {bf16}; s/step")
teacher = load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
for student_name, stage_name in [(s, t) for s in args.students.split(",") for t in args.stages.split(",")]:
    stage = stage_lib.STAGES[stage_name]
    student = build_student(teacher, student_name, "qkv_copy", seed=0)
    module = stage_lib.StageModule(stage, student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = adamw(params, 1e-6, 0.01)
    times = {"inductor": [], "torch": []}
    first = None
    for r in range(args.rounds + 2):
        for form in times:
            os.environ["DISTILL_BENCH_COMPILE"] = "1" if form == "inductor" else "0"
            start = time.perf_counter()
            with stage_lib.teacher_attention([teacher], stage.needs_attention_weights), \
                    (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()):
                loss, _ = module(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            spent = time.perf_counter() - start
            if r == 0 and form == "inductor" and first is None:
                first = spent
            if r >= 2:
                times[form].append(spent)
    a, b = statistics.median(times["torch"]), statistics.median(times["inductor"])
    print(f"  {student_name:16s} {stage_name:18s} torch form {a:.3f}  inductor {b:.3f}  x{a / b:.2f}  (first inductor step {first:.1f} s, "
          f"compiling included)", flush=True)
