"""Probe: rwkv's token shift (`kernels.ddlerp`, one compiled pass a layer) timed inside whole 2,048-token prefills,
again three times on the same arguments right after each prefill, and once more after a 64 MB pass over memory;
medians over layers and rounds (the first rounds dropped). Steady heap, 2 threads.

    python results/speed/ddlerp_in_model_probe.py
"""
import collections
import statistics
import time

import torch

from bench.perf.heap import set_steady
from bench.provenance import header

print(header(), '| heap', set_steady())
torch.set_num_threads(2)
import students.mixers.rwkv as rw
from bench.perf.throughput import embedded_shape_teacher
from students.surgery import build_student

teacher = embedded_shape_teacher()
m = build_student(teacher, "rwkv", init="random", seed=0).eval()
inner = rw.ddlerp
calls = []; acc = collections.defaultdict(list)
def timed(*a, **k):
    calls.append((a, k))
    t = time.perf_counter(); r = inner(*a, **k); acc["in_model"].append(time.perf_counter() - t); return r
rw.ddlerp = timed
ids = torch.randint(0, 4096, (1, 2048))
with torch.inference_mode():
    for r in range(15):
        calls.clear()
        m(ids, use_cache=False)
        for a, k in calls:
            for _ in range(3):
                t = time.perf_counter(); inner(*a, **k); acc["standalone"].append(time.perf_counter() - t)
        # after a 64 MB pass
        for a, k in calls:
            junk = torch.ones(16 * 2**20); junk += 1
            t = time.perf_counter(); inner(*a, **k); acc["after_64MB"].append(time.perf_counter() - t)
for k, v in acc.items(): print(k, f"{1e3*statistics.median(v[12:]):.3f}", f"q1 {1e3*statistics.quantiles(v[12:])[0]:.3f} q3 {1e3*statistics.quantiles(v[12:])[2]:.3f}")
