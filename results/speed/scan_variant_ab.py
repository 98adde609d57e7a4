"""A change to the compiled scan (`linear_scan` in kernels/native/sequence_forward.cpp), given as a diff, against the
sources it applies to (the working tree's, or `--base COMMIT`'s): the scan alone (B = 1, 4 heads of 64, per-channel
decay and bonus, as rwkv's), then whole fp32 prefills (batch 1, no gradient, use_cache=False, as bench.throughput)
with the floor before every call and the extension swapped per call, the sides' order alternating by round.

    python results/speed/scan_variant_ab.py results/speed/scan_hoist_prefetch.diff --base c210e2e --length 2048 \
        --rounds 50 --students rwkv,gla,retnet

The three diffs here (`scan_hoist_tried.diff`, `scan_prefetch_tried.diff` and both, `scan_hoist_prefetch.diff`) apply
to c210e2e's sources; both are in the code from a0a32b4 on.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from native_variant import build_native

import kernels.native as native
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import machine
from kernels.chunking import DENORMALS
from students.surgery import build_student

parser = argparse.ArgumentParser()
parser.add_argument("diff", type=Path, help="the change, or - for none (with --variant-cflags)")
parser.add_argument("--base", default=None, help="the commit whose sources are the base side (default: working tree)")
parser.add_argument("--length", type=int, default=2048)
parser.add_argument("--rounds", type=int, default=12)
parser.add_argument("--students", default="rwkv,gla")
parser.add_argument("--variant-cflags", default="", help="compiler flags added on the variant side, e.g. "
                    "-mprefer-vector-width=512")
args = parser.parse_args()
torch.set_num_threads(2)

base = build_native(f"scan_base_{args.base or 'tree'}", args.base)
flags = args.variant_cflags.split()
tag = (args.diff.stem if str(args.diff) != "-" else "flags") + "".join(c for f in flags for c in f if c.isalnum())
variant = build_native(f"scan_variant_{tag}_{args.base or 'tree'}", args.base, args.diff, flags)
info = machine()
print(f"# {args.diff.name} {' '.join(flags)} on {args.base or 'the working tree'}'s sources: {info.get('device_name')} "
      f"{info.get('cpu_capability')}, torch {torch.__version__}, commit {info.get('commit')}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")

T = args.length
torch.manual_seed(0)
q, k, v = (torch.randn(1, T, 4, 64) * 0.3 for _ in range(3))
log_decay = -torch.exp(torch.randn(1, T, 4, 64) - 2)
bonus = torch.randn(4, 64) * 0.1
outputs = [m.linear_scan(q, k, v, log_decay, bonus, 1.0, None, DENORMALS.exp_floor) for m in (base, variant)]
print(f"  outputs and state identical: {all(torch.equal(a, b) for a, b in zip(*outputs))}")
alone = {"base": [], "variant": []}
for _ in range(30):
    for side, compiled in (("base", base), ("variant", variant)):
        start = time.perf_counter()
        compiled.linear_scan(q, k, v, log_decay, bonus, 1.0, None, DENORMALS.exp_floor)
        alone[side].append(time.perf_counter() - start)
print(f"  the scan alone, T = {T}: base {1e3 * statistics.median(alone['base'][3:]):.3f} ms, "
      f"variant {1e3 * statistics.median(alone['variant'][3:]):.3f} ms")

teacher = embedded_shape_teacher()
floor = build_floor(teacher)
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
for name in args.students.split(","):
    model = build_student(teacher, name, init="random", seed=0).eval()
    times = {"floor": [], "base": [], "variant": []}
    with torch.no_grad():
        for round_ in range(args.rounds + 1):  # the first round warms up
            for side in (["base", "variant"] if round_ % 2 == 0 else ["variant", "base"]):
                start = time.perf_counter()
                floor(ids, use_cache=False)
                times["floor"].append(time.perf_counter() - start)
                native._state["module"] = base if side == "base" else variant
                start = time.perf_counter()
                model(ids, use_cache=False)
                times[side].append(time.perf_counter() - start)
    native._state["module"] = base
    floor_s = statistics.median(times["floor"][2:])
    b, v_ = (statistics.median(times[side][1:]) for side in ("base", "variant"))
    print(f"  {name} prefill {T}: floor {1e3 * floor_s:.1f} ms, base {1e3 * b:.1f} ({b / floor_s:.3f}x), "
          f"variant {1e3 * v_:.1f} ({v_ / floor_s:.3f}x), base / variant {b / v_:.3f}")
