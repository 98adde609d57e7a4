"""A/B: the default end_to_end step (8 x 512, qkv_copy, `auto` precision: fp32 on a CPU without bf16 instructions)
with the fused loss's chunks at 256 rows (CHUNK_LOGITS 2^20 at V 4096, the CPU default) and at 1,024 (2^22), the
two alternating step by step in one process; per-round ratio's median and quartiles.

    python results/speed/loss_chunk_step_ab.py retnet,rwkv,gla [rounds]
"""
import statistics
import sys
import time

import torch

import kernels.distill_loss as dl
import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.perf.heap import set_steady
from bench.provenance import header

set_steady(); torch.set_num_threads(2)
print(header())
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512), generator=torch.Generator().manual_seed(0))
for name in sys.argv[1].split(","):
    torch.manual_seed(0)
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    step = step_fn("end_to_end", student, teacher, batch, use_bf16("auto", torch.device("cpu")))
    sizes = {"256 rows (2^20)": 2**20, "1024 rows (2^22)": 2**22}
    acc = {k: [] for k in sizes}
    for _ in range(3): step()
    for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 10):
        for k, v in sizes.items():
            dl.CHUNK_LOGITS["cpu"] = v
            t = time.perf_counter(); step(); acc[k].append(time.perf_counter() - t)
    dl.CHUNK_LOGITS["cpu"] = 2**20
    ratios = [a / b for a, b in zip(acc["256 rows (2^20)"], acc["1024 rows (2^22)"])]
    q = statistics.quantiles(ratios, n=4)
    print(f"{name:16s} end_to_end step: 256 rows {1e3*statistics.median(acc['256 rows (2^20)']):.0f} ms, 1024 rows "
          f"{1e3*statistics.median(acc['1024 rows (2^22)']):.0f} ms, per round {statistics.median(ratios):.3f}x ({q[0]:.3f}-{q[2]:.3f})", flush=True)
