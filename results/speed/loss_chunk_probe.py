"""Probe: the fused distillation loss (forward and backward) at the distillation batch under bf16 autocast, by
chunk size, against its four logit products alone; and the cost of its per-chunk fp32 += bf16 weight-gradient sum.

    python results/speed/loss_chunk_probe.py
"""
import statistics
import time

import torch

from kernels.distill_loss import fused_distillation_loss

torch.manual_seed(0)
B, T, D, V = 8, 512, 256, 4096
hidden = torch.randn(B, T, D, requires_grad=True)
weight = (torch.randn(V, D) * 0.05).requires_grad_()
teacher_hidden, teacher_weight = torch.randn(B, T, D), torch.randn(V, D) * 0.05
ids = torch.randint(0, V, (B, T))


def loss_step(chunk):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused_distillation_loss(hidden, weight, ids, teacher_hidden=teacher_hidden,
                                          teacher_weight=teacher_weight, chunk_size=chunk, matmul_dtype=torch.bfloat16)
    loss.backward()


grad_w, grad_low = torch.zeros(V, D), torch.randn(V, D).bfloat16()
a, b = torch.randn(B * T, V).bfloat16(), torch.randn(B * T, D).bfloat16()


def sums():  # 16 chunks' grad_w += (bf16 product)
    for _ in range(16):
        grad_w.add_(grad_low)


def products():  # the four (B·T x V x D) products of one step, in bf16
    for _ in range(2):
        torch.mm(a, weight.detach().bfloat16())
    torch.mm(a.T, b)
    torch.mm(a, weight.detach().bfloat16())


calls = {f"loss, chunk {c}": (lambda c=c: loss_step(c)) for c in (256, 512, 1024)}
calls.update({"16 grad_w sums": sums, "four products alone": products})
for fn in calls.values():
    fn()
times = {name: [] for name in calls}
for _ in range(7):
    for name, fn in calls.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
for name, t in times.items():
    print(f"{name:22s} {statistics.median(t) * 1e3:.1f} ms")
