"""Probe: RWKV-6's featurize at one layer over a long prompt, split into its compiled token shift and decay (ddlerp,
native and torch forms) and the four stream projections, beside one dense product of the same rows (fp32, no_grad,
batch 1, the embedded teacher's width; medians of 5, alternating forms). glibc's heap kept steady, as the throughput
benchmark keeps it (from 2026-12-07; the output's earlier blocks paid a fresh mapping for every large output).

    python results/speed/rwkv_featurize_probe.py [--length 16384]
"""
import argparse
import statistics
import time

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.heap import set_steady
from bench.provenance import machine
from kernels.ddlerp import ddlerp
from students.layers import batched_linear
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--length", type=int, default=16384)
args = parser.parse_args()
set_steady()
torch.set_num_threads(2)
info = machine()
print(f"{info['device_name']} ({info['cpu_capability']}), torch {info['torch']}, commit {info['commit']}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; T = {args.length}, one layer, ms")
teacher = load_teacher(str(EMBEDDED_TEACHER))
mixer = next(m for m in build_student(teacher, "rwkv", init="random", seed=0).modules()
             if type(m).__name__ == "RWKV6Mixer")
x = torch.randn(1, args.length, teacher.config.hidden_size, generator=torch.Generator().manual_seed(0))
shift_args = (x, None, mixer.maa_x, mixer.maa_w1, mixer.maa_wkvrg, mixer.maa_w2, mixer.time_decay, mixer.decay_w1,
              mixer.decay_w2)
streams, _ = ddlerp(*shift_args)
dense = torch.randn(x.shape[-1], 3 * x.shape[-1])
calls = {"ddlerp native": lambda: ddlerp(*shift_args, backend="native"),
         "ddlerp torch": lambda: ddlerp(*shift_args, backend="torch"),
         "4 projections": lambda: batched_linear(streams, [mixer.k_proj, mixer.v_proj, mixer.r_proj, mixer.g_proj]),
         "featurize": lambda: mixer.featurize(x, {}),
         "x @ (D x 3D)": lambda: x[0] @ dense}
times = {name: [] for name in calls}
with torch.no_grad():
    for fn in calls.values():
        fn()
    for _ in range(5):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
for name, values in times.items():
    print(f"  {name:14s} {1e3 * statistics.median(values):7.1f}")
