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
set_steady(); torch.set_num_threads(2); torch.manual_seed(0)
B, T, D, V = 8, 512, 256, 4096
hidden = torch.randn(B, T, D, requires_grad=True)
weight = (torch.randn(V, D) * 0.05).requires_grad_()
th, tw = torch.randn(B, T, D), torch.randn(V, D) * 0.05
ids = torch.randint(0, V, (B, T))
def step(chunk):
    loss, _ = fused_distillation_loss(hidden, weight, ids, teacher_hidden=th, teacher_weight=tw, chunk_size=chunk)
    loss.backward()
chunks = [64, 128, 256, 512, 1024]
acc = {c: [] for c in chunks}
for r in range(12):
    for c in chunks:
        t = time.perf_counter(); step(c); acc[c].append(time.perf_counter() - t)
for c in chunks: print(f"chunk {c:5d} {1e3*statistics.median(acc[c][2:]):7.1f} ms")
a = torch.randn(4096, D); 
def prods():
    for s in range(0, 4096, 256):
        torch.mm(a[s:s+256], weight.detach().T); torch.mm(th.view(-1, D)[s:s+256], tw.T)
m = []
for r in range(10):
    t = time.perf_counter(); prods(); m.append(time.perf_counter() - t)
print(f"the two logit products alone, 16 chunks of 256: {1e3*statistics.median(m[2:]):.1f} ms")
