"""Probe: the chunk form without decay factors (linear attention: every factor exp(0) = 1, so none is formed and
the carry is a plain running sum) against the base checkout's chunk form, which formed them, in the default
training steps, alternating step by step in one process. The two give the same values bit for bit (checked here
on the step's loss, then timed).

    git worktree add /tmp/base <ref>
    python results/speed/no_decay_chunk_ab.py /tmp/base [rounds] [stages]
"""
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.perf.kernel_ab import _describe, load_base
from bench.perf.timing import time_round_robin
from bench.provenance import header

lr = importlib.import_module("kernels.linear_recurrence")  # the package (`kernels` exports a function by its name)
lr_native = importlib.import_module("kernels.linear_recurrence.native")
base_dir = Path(sys.argv[1])
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
stages = sys.argv[3].split(",") if len(sys.argv) > 3 else ["end_to_end", "hidden_alignment"]
base, new = load_base(base_dir)["linear_recurrence"], lr.BACKENDS["chunk"]
USE_BASE = {"on": False}


def chunk(*args, **kwargs):
    return (base if USE_BASE["on"] else new)(*args, **kwargs)


lr.BACKENDS["chunk"] = chunk
lr_native.linear_recurrence_chunk = chunk  # a call recording a gradient goes from `native` to `chunk`

torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
bf16 = use_bf16("auto", torch.device("cpu"))
print(header())
print(f"base: {_describe(base_dir)}; linear_attention, batch 8 x 512, bf16 autocast {bf16}; base and new chunk "
      f"forms taking turns step by step (time_round_robin), {rounds} rounds, s/step "
      f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
for stage in stages:
    losses = []
    for on in (True, False):  # the same weights and data: the same loss bit for bit
        USE_BASE["on"] = on
        student = students.build_student(teacher, "linear_attention", "qkv_copy", seed=0)
        losses.append(step_fn(stage, student, teacher, batch, bf16, run_optimizer=False)().item())
    student = students.build_student(teacher, "linear_attention", "qkv_copy", seed=0)
    step = step_fn(stage, student, teacher, batch, bf16)
    times = time_round_robin({"base": step, "new": step}, repeats=rounds, warmup=2,
                             before={"base": lambda: USE_BASE.update(on=True), "new": lambda: USE_BASE.update(on=False)})
    old, now = times["base"]["median_s"], times["new"]["median_s"]
    ratios = sorted(a / b for a, b in zip(times["base"]["times_s"], times["new"]["times_s"]))
    print(f"  {stage:16s} base {old:.3f}  new {now:.3f}  x{old / now:.3f}  (per-round ratios {ratios[0]:.2f}-"
          f"{ratios[-1]:.2f}, median {statistics.median(ratios):.3f}); first step's loss base {losses[0]:.8f} "
          f"new {losses[1]:.8f} (equal: {losses[0] == losses[1]})", flush=True)
