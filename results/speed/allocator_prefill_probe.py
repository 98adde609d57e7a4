"""Prefill of the floor, the teacher and students side by side in one process (fp32, batch 1, the benchmark's
embedded shapes, `time_round_robin`), under glibc's default allocator or with memory retained (RETAIN=1:
mallopt M_MMAP_MAX = 0 and M_TRIM_THRESHOLD = 2³¹ − 1, so freed blocks are reused instead of unmapped and
page-faulted in again). Run the two settings in alternating processes:

    for r in 0 1 0 1; do RETAIN=$r OMP_NUM_THREADS=2 python results/speed/allocator_prefill_probe.py 16384 teacher,mamba 2; done
"""
import ctypes
import os
import sys

import torch

from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.perf.timing import time_round_robin
from students import build_student

torch.set_num_threads(2)
torch.manual_seed(0)
RETAIN = os.environ.get("RETAIN") == "1"
if RETAIN:
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    assert libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1

T, names, repeats = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
teacher = embedded_shape_teacher()
ids = torch.randint(0, 1000, (1, T))
models = {"floor": build_floor(teacher)}
for name in names:
    models[name] = teacher if name == "teacher" else build_student(teacher, name, init="random", seed=0).eval()


def prefill(model):
    def call():
        with torch.inference_mode():
            model(ids)
    return call


result = time_round_robin({name: prefill(model) for name, model in models.items()}, repeats=repeats, warmup=1)
floor = result["floor"]["median_s"]
print("retain" if RETAIN else "system", T,
      {name: f'{r["median_s"]:.3f}s x{r["median_s"] / floor:.2f}' for name, r in result.items()}, flush=True)
