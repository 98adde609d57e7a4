"""The floor's 16,384-token prefill and its minor page faults a call under glibc's heap as it comes and with its
mapping threshold fixed at a given size (trim threshold and top pad as bench.perf.heap.STEADY), one process each:

    for v in default 33554432 1073741824; do python results/speed/heap_floor_16384_probe.py $v; done
"""
import resource
import statistics
import sys
import time

import torch

from bench.perf.heap import set_heap
from bench.perf.throughput import build_floor, embedded_shape_teacher

torch.set_num_threads(2)
if sys.argv[1] != "default":
    set_heap({"M_MMAP_THRESHOLD": int(sys.argv[1]), "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 << 20})
floor = build_floor(embedded_shape_teacher())
ids = torch.randint(0, 4096, (1, 16384))
times, faults = [], []
with torch.no_grad():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        floor(ids, use_cache=False)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sys.argv[1], f"floor 16384: {1e3 * statistics.median(times[1:]):.0f} ms, "
      f"{statistics.median(faults[1:]):.0f} faults a call")
