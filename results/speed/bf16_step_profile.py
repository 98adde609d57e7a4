"""Probe: torch profiler over two end_to_end steps of the run's default path (bf16 autocast where the CPU has bf16
instructions), ops by self time.

    python results/speed/bf16_step_profile.py retnet
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.provenance import header

torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
student = students.build_student(teacher, sys.argv[1], "qkv_copy", seed=0)
bf16 = use_bf16("auto", torch.device("cpu"))
step = step_fn("end_to_end", student, teacher, batch, bf16)
for _ in range(2):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(2):
        step()
print(header())
print(f"{sys.argv[1]} end_to_end, batch 8 x 512, bf16 autocast {bf16}, two steps")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50))
