"""RWKV-6's token shift with the k, v, r, g projections taken inside its compiled pass, while each stream is in
cache (`ddlerp_projections_tried.diff`: a `projections` (4, D, N) argument, and the AVX-512 product's loops swapped
so a panel of the weight's columns stays in L1 across a block's rows), against the pass as it is followed by torch's
batched product of the four streams. Both sides built from one commit's sources; one process, sides alternating,
steady heap; the embedded width (D = 256, mix rank 32, decay rank 64), one layer's call.

    python results/speed/ddlerp_projections_ab.py BASE_COMMIT [tokens]

old: the pass + torch.bmm; mid: the patched pass without projections + torch.bmm (the swapped loops alone);
new: the patched pass with projections; *_alone: the pass without the four products.
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from native_variant import build_native

from bench.perf.heap import set_steady
from bench.provenance import header

base_commit = sys.argv[1]
T = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
base = build_native(f"ddlerp_base_{base_commit}", base_commit)
variant = build_native(f"ddlerp_projections_{base_commit}", base_commit,
                       Path(__file__).with_name("ddlerp_projections_tried.diff"))
torch.manual_seed(0)
D, R, Rd = 256, 32, 64
x = torch.randn(1, T, D)
weights = (torch.rand(D), torch.randn(D, 5 * R) * 0.05, torch.rand(5, D), torch.randn(5, R, D) * 0.01,
           torch.randn(D) - 3, torch.randn(D, Rd) * 0.05, torch.randn(Rd, D) * 0.01)
projections = torch.randn(4, D, D) * D ** -0.5
args = (x, None, *weights)


def old():
    streams, log_decay = base.ddlerp(*args)
    return torch.bmm(streams.view(4, T, D), projections), log_decay


def mid():
    streams, log_decay = variant.ddlerp(*args, None)
    return torch.bmm(streams.view(4, T, D), projections), log_decay


sides = {"old": old, "mid": mid, "new": lambda: variant.ddlerp(*args, projections),
         "base_alone": lambda: base.ddlerp(*args), "variant_alone": lambda: variant.ddlerp(*args, None)}
a, b = old(), sides["new"]()
print(f"T = {T}: max |old - new| projected streams {(a[0].view(4, T, D) - b[0].view(4, T, D)).abs().max().item():.2e}, "
      f"log decay {(a[1] - b[1]).abs().max().item():.2e}")
times = {name: [] for name in sides}
for r in range(60):
    for name, fn in (list(sides.items()) if r % 2 else list(sides.items())[::-1]):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
for name in sides:
    print(f"  {name:14s} {1e3 * statistics.median(times[name][4:]):.3f} ms")
print(f"  old / new, per-round median: {statistics.median(o / n for o, n in zip(times['old'][4:], times['new'][4:])):.3f}")
