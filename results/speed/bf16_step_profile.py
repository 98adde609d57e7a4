"""Probe: where a bf16-autocast end_to_end step's time goes on a CPU with bf16 instructions (torch profiler,
self CPU time by op per step after a warm-up). The profiler's own overhead
weighs on the many small elementwise ops: read it as a list of candidates and time each change with an A/B
(`distill_rows_ab.py`, `flush_denormal_ab.py`).

    python results/speed/bf16_step_profile.py [--students gla,xlstm,gated_deltanet] [--stage end_to_end] [--steps 3]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill import stages as stage_lib
from bench.distill.loop import adamw
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="gla,xlstm,gated_deltanet")
parser.add_argument("--stage", default="end_to_end")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--rows", type=int, default=25)
parser.add_argument("--shapes", action="store_true", help="group by input shapes")
args = parser.parse_args()
torch.set_num_threads(2)
torch.manual_seed(0)
teacher = load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
for name in args.students.split(","):
    student = build_student(teacher, name, "qkv_copy", seed=0)
    stage = stage_lib.STAGES[args.stage]
    module = stage_lib.StageModule(stage, student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = adamw(params, 1e-6, 0.01)

    def step():
        with stage_lib.eager_attention([teacher], stage.needs_attention_weights), torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            step()
    print(f"== {name} / {args.stage}, {args.steps} steps, bf16 autocast")
    for e in sorted(prof.key_averages(group_by_input_shape=args.shapes), key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        print(f"  {e.key[:34]:34s} {e.self_cpu_time_total / 1e3 / args.steps:8.1f} ms/step {e.count // args.steps:6d} calls/step  {e.input_shapes if args.shapes else ''}")
