"""One mixer's recurrence (`mix`) at 2,048 tokens timed right after the featurize that made its inputs, again on the
same inputs, and on older inputs after a featurize, after a 64 MB pass over memory, after a sleep: what the scan
pays in a model for running on inputs just written. Steady heap, 2 threads, layer 0 of an untrained student.

    python results/speed/scan_fresh_inputs_probe.py rwkv
"""
import collections
import statistics
import sys
import time

import torch

from bench.provenance import header
from bench.perf.heap import set_steady
print(header(), '| heap', set_steady())
torch.set_num_threads(2)
from bench.perf.throughput import embedded_shape_teacher
from students.surgery import build_student
teacher = embedded_shape_teacher()
m = build_student(teacher, sys.argv[1] if len(sys.argv) > 1 else "rwkv", init="random", seed=0).eval()
mixer = m.model.layers[0].mixer
x = torch.randn(1, 2048, 256) * 0.5
acc = collections.defaultdict(list)
with torch.inference_mode():
    old = mixer.featurize(x, {})
    junk = torch.randn(16 * 2**20)
    for r in range(30):
        f = mixer.featurize(x, {})
        t = time.perf_counter(); mixer.mix(f, "auto", {}); acc["fresh"].append(time.perf_counter() - t)
        t = time.perf_counter(); mixer.mix(f, "auto", {}); acc["fresh_again"].append(time.perf_counter() - t)
        f = mixer.featurize(x, {})
        t = time.perf_counter(); mixer.mix(old, "auto", {}); acc["old_after_featurize"].append(time.perf_counter() - t)
        junk.mul_(1.0)
        t = time.perf_counter(); mixer.mix(old, "auto", {}); acc["old_after_64MB"].append(time.perf_counter() - t)
        time.sleep(0.005)
        t = time.perf_counter(); mixer.mix(old, "auto", {}); acc["old_after_sleep"].append(time.perf_counter() - t)
for k, v in acc.items(): print(k, f"{1e3*statistics.median(v[3:]):.3f}")
