"""Probe: rwkv's k, v, r, g projections (4 inputs, 4 weights of 256 x 256, 2,048 tokens) as torch's batched product
and as four products, against the floor's shapes of the same FLOPs (one input by a 256 x 768 stacked weight plus
one by 256 x 256; one by 256 x 1,024), taking turns; medians and GFLOP/s. Steady heap, 2 threads.

    python results/speed/projection_shapes_probe.py
"""
import statistics
import time

import torch

from bench.perf.heap import set_steady

from bench.provenance import header

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
T, D = 2048, 256
xs = torch.randn(4, T, D); W = torch.randn(4, D, D); Wt = W.transpose(1, 2).contiguous()
x = torch.randn(T, D); W3 = torch.randn(D, 3 * D); W1 = torch.randn(D, D)
out = torch.empty(4, T, D)
lin = [torch.randn(D, D) for _ in range(4)]
calls = {
  "bmm (4,T,D)x(4,D,D)": lambda: torch.bmm(xs, W),
  "bmm transposed-view weights": lambda: torch.bmm(xs, Wt.transpose(1, 2)),
  "4 mm into out": lambda: [torch.mm(xs[i], W[i], out=out[i]) for i in range(4)],
  "4 F.linear": lambda: [torch.nn.functional.linear(xs[i], lin[i]) for i in range(4)],
  "mm (T,D)x(D,3D) + (T,D)x(D,D)": lambda: (torch.mm(x, W3), torch.mm(x, W1)),
  "mm (T,D)x(D,4D)": lambda: torch.mm(x, torch.empty(D, 4 * D)),
  "mm (4T,D)x(D,D)": lambda: torch.mm(xs.view(4 * T, D), W1),
}
acc = {k: [] for k in calls}
for r in range(60):
    for k, c in calls.items():
        t = time.perf_counter(); c(); acc[k].append(time.perf_counter() - t)
fl = 4 * 2 * T * D * D
for k, v in acc.items():
    m = statistics.median(v[5:]); print(f"{k:34s} {1e3*m:.3f} ms  {fl/m/1e9:.0f} GFLOP/s")
