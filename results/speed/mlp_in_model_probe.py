"""Probe: the teacher's MLP (shared by the floor and every student) timed inside whole 2,048-token prefills of the
floor and of rwkv, taking turns, and again on the same input right after each prefill: is a student's MLP slower than
the floor's in its own model? Medians over layers and rounds. Steady heap, 2 threads.

    python results/speed/mlp_in_model_probe.py
"""
import collections
import statistics
import time

import torch

from bench.perf.heap import set_steady

from bench.provenance import header

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
from bench.perf.throughput import build_floor, embedded_shape_teacher
from students.surgery import build_student

teacher = embedded_shape_teacher()
models = {"floor": build_floor(teacher), "rwkv": build_student(teacher, "rwkv", init="random", seed=0).eval()}
acc = collections.defaultdict(list); seen = {}
for name, m in models.items():
    for i, layer in enumerate(m.model.layers):
        inner = layer.mlp.forward
        def timed(x, inner=inner, i=i, name=name):
            seen[(name, i)] = (inner, x)
            t = time.perf_counter(); r = inner(x); acc[(name, "in_model")].append(time.perf_counter() - t); return r
        layer.mlp.forward = timed
ids = torch.randint(0, 4096, (1, 2048))
with torch.inference_mode():
    for r in range(15):
        for name, m in models.items():
            t = time.perf_counter(); m(ids, use_cache=False); acc[(name, "total")].append(time.perf_counter() - t)
            for i in range(4):
                inner, x = seen[(name, i)]
                t = time.perf_counter(); inner(x); acc[(name, "standalone")].append(time.perf_counter() - t)
for k, v in acc.items():
    skip = 2 if k[1] == "total" else 8
    print(k, f"{1e3*statistics.median(v[skip:]):.3f} ms")
