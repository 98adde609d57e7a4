"""Whole fp32 prefills (batch 1, no gradient, use_cache=False), the models taking turns in one process, steady heap:
per-round median of each model's time over the floor's. Run once as it is and once with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35 then advises transparent huge pages for the heap), processes
alternating; the last column is the process's AnonHugePages.

    python results/speed/hugepage_heap_probe.py floor,rwkv,mamba,gated_deltanet,gla,teacher 2048
"""
import os
import statistics
import sys
import time

import torch

from bench.provenance import header
from bench.perf.heap import set_steady
print(header(), '| heap', set_steady())
torch.set_num_threads(2)
from bench.perf.throughput import embedded_shape_teacher, build_floor
from students.surgery import build_student
teacher = embedded_shape_teacher()
names = sys.argv[1].split(","); T = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
models = {n: (build_floor(teacher) if n == "floor" else teacher if n == "teacher" else build_student(teacher, n, init="random", seed=0)).eval() for n in names}
ids = torch.randint(0, 4096, (1, T))
ts = {n: [] for n in names}
with torch.inference_mode():
    for r in range(12):
        for n, mdl in models.items():
            t = time.perf_counter(); mdl(ids, use_cache=False); ts[n].append(time.perf_counter() - t)
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHuge")]
out = [f"{os.environ.get('GLIBC_TUNABLES', 'default'):28s} floor {1e3*statistics.median(ts['floor'][2:]):.1f} ms"]
for n in names[1:]:
    out.append(f"{n} {statistics.median(a / b for a, b in zip(ts[n][2:], ts['floor'][2:])):.3f}")
print(" | ".join(out), "|", huge[0].strip() if huge else "")
