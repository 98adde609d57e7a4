"""Each layer's recurrence (`mix`) timed inside whole 2,048-token prefills, and again three times on the same inputs
right after each prefill (standalone): medians over layers and rounds (the first rounds dropped). Steady heap.

    python results/speed/scan_in_model_probe.py rwkv [threads]
"""
import collections
import statistics
import sys
import time

import torch

from bench.provenance import header
from bench.perf.heap import set_steady
print(header(), '| heap', set_steady())
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from bench.perf.throughput import embedded_shape_teacher
from students.surgery import build_student
teacher = embedded_shape_teacher()
m = build_student(teacher, sys.argv[1] if len(sys.argv) > 1 else "rwkv", init="random", seed=0).eval()
seen = {}; acc = collections.defaultdict(list)
for i, layer in enumerate(m.model.layers):
    inner = layer.mixer.mix
    def timed(f, backend, state, inner=inner, i=i):
        seen[i] = (inner, f, backend, state)
        t = time.perf_counter(); r = inner(f, backend, state); acc["in_model"].append(time.perf_counter() - t)
        return r
    layer.mixer.mix = timed
ids = torch.randint(0, 4096, (1, 2048))
with torch.inference_mode():
    for r in range(15):
        m(ids, use_cache=False)
        for i, (inner, f, backend, state) in seen.items():
            for _ in range(3):
                t = time.perf_counter(); inner(f, backend, state); acc["standalone"].append(time.perf_counter() - t)
for k, v in acc.items(): print(sys.argv[1], torch.get_num_threads(), "threads", k, f"{1e3*statistics.median(v[12:]):.3f}", f"q1 {1e3*statistics.quantiles(v[12:])[0]:.3f} q3 {1e3*statistics.quantiles(v[12:])[2]:.3f}")
