"""A change to the compiled scan (`linear_scan` in kernels/native/sequence_forward.cpp), given as a diff against a
commit's sources, timed alone on every decay form (per-channel with RWKV-6's bonus, per-channel, per-head, none),
B = 1, 4 heads of 64, on one thread and on two, the sides alternating call by call; medians of 22 calls.

    python results/speed/scan_forms_ab.py results/speed/scan_tiled_tried.diff --base 9d48e65 --length 2048 [--cold]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from native_variant import build_native

from bench.provenance import machine
from kernels.chunking import DENORMALS

parser = argparse.ArgumentParser()
parser.add_argument("diff", type=Path)
parser.add_argument("--base", required=True, help="the commit whose sources are the base side")
parser.add_argument("--length", type=int, default=2048)
parser.add_argument("--cold", action="store_true", help="write a 16 MB buffer before every call (inputs out of L2, as "
                    "in a model, where the projections before the scan pass 10 MB through the caches)")
args = parser.parse_args()
sides = {"base": build_native(f"scan_forms_base_{args.base}", args.base),
         "variant": build_native(f"scan_forms_{args.diff.stem}_{args.base}", args.base, args.diff)}
info = machine()
print(f"# {args.diff.name} on {args.base}'s sources: {info.get('device_name')} {info.get('cpu_capability')}, "
      f"torch {torch.__version__}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, T = {args.length}"
      f"{', inputs out of L2 before every call' if args.cold else ''}")
T = args.length
torch.manual_seed(0)
q, k, v = (torch.randn(1, T, 4, 64) * 0.3 for _ in range(3))
forms = {"channel + bonus (rwkv)": (-torch.exp(torch.randn(1, T, 4, 64) - 2), torch.randn(4, 64) * 0.1),
         "channel (gla)": (-torch.exp(torch.randn(1, T, 4, 64) - 2), None),
         "head (retnet)": (-torch.exp(torch.randn(1, T, 4) - 2), None), "none (linear_attention)": (None, None)}
evict = torch.zeros(4 << 20)
for threads in (1, 2):
    torch.set_num_threads(threads)
    for name, (log_decay, bonus) in forms.items():
        times = {side: [] for side in sides}
        for _ in range(25):
            for side, compiled in sides.items():
                if args.cold:
                    evict.add_(1.0)
                start = time.perf_counter()
                compiled.linear_scan(q, k, v, log_decay, bonus, 1.0, None, DENORMALS.exp_floor)
                times[side].append(time.perf_counter() - start)
        base, variant = (1e3 * statistics.median(times[side][3:]) for side in sides)
        print(f"  {threads} thread(s), {name:24s} base {base:.3f} ms  variant {variant:.3f} ms  "
              f"base / variant {base / variant:.2f}")
