"""A/B: rwkv's default end_to_end step (8 x 512, qkv_copy, `auto` precision) with its bonus diagonal's backward as
einsum's 1 x 1 batched products (before) and as elementwise products (`_RowDot`, after; the same values bit for bit),
the two alternating step by step in one process; per-round ratio's median and quartiles.

    python results/speed/bonus_row_dot_ab.py [rounds] [auto|fp32]
"""
import importlib
import statistics
import sys
import time

import torch

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.perf.heap import set_steady
from bench.provenance import header

chunk = importlib.import_module("kernels.linear_recurrence.chunk")  # the package's name is also its function's


class EinsumDot:
    apply = staticmethod(lambda a, b: torch.einsum("bthk,bthk->bth", a, b))


set_steady(); torch.set_num_threads(2)
print(header())
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)
student = students.build_student(teacher, "rwkv", "qkv_copy", seed=0)
bf16 = use_bf16(sys.argv[2] if len(sys.argv) > 2 else "auto", torch.device("cpu"))
step = step_fn("end_to_end", student, teacher, batch, bf16)
sides = {"einsum": EinsumDot, "row dot": chunk._RowDot}
acc = {k: [] for k in sides}
for _ in range(3):
    step()
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 12):
    for name, dot in sides.items():
        chunk._RowDot = dot
        t = time.perf_counter(); step(); acc[name].append(time.perf_counter() - t)
chunk._RowDot = sides["row dot"]
ratios = [a / b for a, b in zip(acc["einsum"], acc["row dot"])]
q = statistics.quantiles(ratios, n=4)
print(f"rwkv end_to_end step (bf16 autocast {bf16}): einsum {1e3 * statistics.median(acc['einsum']):.0f} ms, "
      f"row dot {1e3 * statistics.median(acc['row dot']):.0f} ms, per round {statistics.median(ratios):.3f}x "
      f"({q[0]:.3f}-{q[2]:.3f}), {len(ratios)} rounds", flush=True)
