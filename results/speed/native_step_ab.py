"""Decode A/B in one process: each student's recurrence step as one compiled call (`kernels.native`, new) against
the Python step (DISTILL_BENCH_NATIVE=0, old), alternating per round, after 1,024 tokens, the teacher alongside.

    python results/speed/native_step_ab.py [--rounds 15] [--students mamba,gated_deltanet,...]
"""
import argparse
import os
import statistics

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder
from kernels import native
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

from decode_ab import ratio_summary, step_logits, time_alternating  # beside this file

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--students", default="mamba,linear_attention,rwkv,retnet,gla,xlstm,metala,gated_deltanet")
args = parser.parse_args()
torch.set_num_threads(2)
assert native.module() is not None, "the extension could not be built here"


def use(mode):
    os.environ["DISTILL_BENCH_NATIVE"] = "1" if mode == "new" else "0"


teacher = load_teacher(str(EMBEDDED_TEACHER))
ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
names = args.students.split(",")
models = {"teacher": teacher, **{s: build_student(teacher, s, init="random", seed=0).eval() for s in names}}
with torch.inference_mode():
    decoders = {name: _Decoder(m, getattr(m(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
                for name, m in models.items()}
    logits = {name: step_logits(decoders[name], use) for name in names}
    times = time_alternating(decoders, use, args.rounds)
use("new")
teacher_ms = statistics.median(times["teacher", "old"] + times["teacher", "new"])
print(f"decode after 1,024 tokens, ms/token, medians of {args.rounds} rounds; teacher {teacher_ms:.3f}")
for name in names:
    old, new = times[name, "old"], times[name, "new"]
    diff = (logits[name]["new"] - logits[name]["old"]).abs().max().item()
    print(f"{name:16} python step {statistics.median(old):.3f}  compiled step {statistics.median(new):.3f}  "
          f"{ratio_summary(old, new)}  vs teacher {statistics.median(old) / teacher_ms:.2f} -> "
          f"{statistics.median(new) / teacher_ms:.2f}  logits max |new - old| {diff:.1e}", flush=True)
