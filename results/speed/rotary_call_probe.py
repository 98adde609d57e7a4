"""One RoPE call, the torch form against the compiled pass (`kernels.rotary.native`), alternating: a 2,048-token
prompt's q at the embedded shape (1, 2,048, 4, 64) and one decoded token's (1, 1, 4, 64); medians, steady heap.

    python results/speed/rotary_call_probe.py
"""
import statistics

import torch
from ab_rounds import timed

from bench.perf.heap import set_steady
from bench.provenance import header
from kernels.rotary import rotary
from students.layers import rope_inv_freq, rotary_angles

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
for T, calls in ((2048, 200), (1, 5000)):
    x = torch.randn(1, T, 256).view(1, T, 4, 64)
    cos, sin = rotary_angles(rope_inv_freq(64, 10000.0), 1000, T, "cpu")
    times = {"torch": [], "native": []}
    with torch.no_grad():
        for round_ in range(calls):
            for backend in (("torch", "native") if round_ % 2 == 0 else ("native", "torch")):
                times[backend].append(timed(rotary, x, cos, sin, backend=backend))
    unit, scale = ("ms", 1e3) if T > 1 else ("µs", 1e6)
    print(f"  (1, {T}, 4, 64): torch form {scale * statistics.median(times['torch'][10:]):.2f} {unit}, compiled pass "
          f"{scale * statistics.median(times['native'][10:]):.2f} {unit}")
