"""The linear recurrence's compiled scan (`linear_tokens` in kernels/native/sequence_forward.cpp) with blocks of
16-float registers where the build targets AVX-512 (`linear_scan_wide.diff`) against the 8-float blocks before it,
built from one commit's sources side by side: the scan alone (B = 1, 4 heads of 64, per-channel decay and bonus, as
rwkv's), then whole fp32 prefills (batch 1, no gradient, use_cache=False, as bench.throughput) with the floor before
every call, the extension swapped per call, the sides' order alternating by round, steady heap.

    python results/speed/linear_scan_wide_ab.py BASE_COMMIT STUDENTS [rounds] [length ...]

The diff applies to 68d5b6c's sources (the change is in the code from the commit after it); the run kept in the
.txt beside this used 68d5b6c.
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from native_variant import build_native

import kernels.native as native
from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from kernels.chunking import DENORMALS
from students.surgery import build_student

base_commit = sys.argv[1]
students = sys.argv[2].split(",")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 20
lengths = [int(n) for n in sys.argv[4:]] or [2048, 16384]
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
base = build_native(f"linear_base_{base_commit}", base_commit)
variant = build_native(f"linear_wide_{base_commit}", base_commit, Path(__file__).with_name("linear_scan_wide.diff"))

torch.manual_seed(0)
T = 2048
q, k, v = (torch.randn(1, T, 4, 64) * 0.3 for _ in range(3))
log_decay = -torch.exp(torch.randn(1, T, 4, 64) - 2)
bonus = torch.randn(4, 64) * 0.1
state = torch.randn(1, 4, 64, 64) * 0.1
outputs = [m.linear_scan(q, k, v, log_decay, bonus, 1.0, state, DENORMALS.exp_floor) for m in (base, variant)]
print(f"  outputs and state identical: {all(torch.equal(a, b) for a, b in zip(*outputs))}")
alone = {"base": [], "variant": []}
for _ in range(40):
    for side, compiled in (("base", base), ("variant", variant)):
        start = time.perf_counter()
        compiled.linear_scan(q, k, v, log_decay, bonus, 1.0, None, DENORMALS.exp_floor)
        alone[side].append(time.perf_counter() - start)
print(f"  the scan alone, T = {T}: base {1e3 * statistics.median(alone['base'][3:]):.3f} ms, "
      f"variant {1e3 * statistics.median(alone['variant'][3:]):.3f} ms")

teacher = embedded_shape_teacher()
floor = build_floor(teacher)
for name, length in ((name, length) for name in students for length in lengths):
    model = build_student(teacher, name, init="random", seed=0).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    times = {"floor_base": [], "floor_variant": [], "base": [], "variant": []}
    with torch.no_grad():
        logits = {}
        for side, compiled in (("base", base), ("variant", variant)):
            native._state["module"] = compiled
            logits[side] = model(ids, use_cache=False).logits
        print(f"  T = {length}: logits identical: {torch.equal(logits['base'], logits['variant'])}")
        for round_ in range(rounds + 1):  # the first round warms up
            for side in (["base", "variant"] if round_ % 2 == 0 else ["variant", "base"]):
                start = time.perf_counter()
                floor(ids, use_cache=False)
                times["floor_" + side].append(time.perf_counter() - start)
                native._state["module"] = base if side == "base" else variant
                start = time.perf_counter()
                model(ids, use_cache=False)
                times[side].append(time.perf_counter() - start)
    native._state["module"] = base
    ratio = {side: [s / f for s, f in zip(times[side][1:], times["floor_" + side][1:])] for side in ("base", "variant")}
    per_round = [b / v for b, v in zip(times["base"][1:], times["variant"][1:])]
    quartiles = statistics.quantiles(per_round, n=4)
    print(f"  {name} prefill {length}: x floor base {statistics.median(ratio['base']):.3f}, variant "
          f"{statistics.median(ratio['variant']):.3f}; base / variant per round {statistics.median(per_round):.3f} "
          f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})")
