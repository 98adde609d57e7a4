"""Probe: the fused distillation loss (forward and backward) in fp32 at the distillation batch (8 x 512, D 256,
V 4096), by chunk size, chunks taking turns; and its two logit products alone in chunks of 256 (the CPU default at
this vocabulary). For CPUs without bf16 instructions, where the default run trains in fp32.

    python results/speed/loss_chunk_fp32_probe.py
"""
import statistics
import time

import torch

from bench.perf.heap import set_steady
from bench.provenance import header
from kernels.distill_loss import fused_distillation_loss

print(header())
set_steady()
torch.set_num_threads(2)
torch.manual_seed(0)
B, T, D, V = 8, 512, 256, 4096  # the inputs of loss_chunk_probe.py, without autocast
hidden = torch.randn(B, T, D, requires_grad=True)
weight = (torch.randn(V, D) * 0.05).requires_grad_()
teacher_hidden, teacher_weight = torch.randn(B, T, D), torch.randn(V, D) * 0.05
ids = torch.randint(0, V, (B, T))


def loss_step(chunk):
    loss, _ = fused_distillation_loss(hidden, weight, ids, teacher_hidden=teacher_hidden,
                                      teacher_weight=teacher_weight, chunk_size=chunk)
    loss.backward()


def logit_products():  # the student's and the teacher's logits, 16 chunks of 256 rows
    for start in range(0, B * T, 256):
        torch.mm(student_rows[start:start + 256], weight.detach().T)
        torch.mm(teacher_hidden.view(-1, D)[start:start + 256], teacher_weight.T)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


chunks = [64, 128, 256, 512, 1024]
times = {c: [] for c in chunks}
for _ in range(12):  # chunks take turns; the first two rounds are warm-up
    for c in chunks:
        times[c].append(timed(lambda c=c: loss_step(c)))
for c in chunks:
    print(f"chunk {c:5d} {1e3 * statistics.median(times[c][2:]):7.1f} ms")
student_rows = torch.randn(B * T, D)
product_times = [timed(logit_products) for _ in range(10)]
print(f"the two logit products alone, 16 chunks of 256: {1e3 * statistics.median(product_times[2:]):.1f} ms")
