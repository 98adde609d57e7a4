"""The delta rule's compiled scan (`delta_token` in kernels/native/sequence_forward.cpp) with 64 value columns in
16-float registers where the build targets AVX-512 (`delta_scan_wide.diff`) against the 8-float blocks before it,
built from one commit's sources side by side: the scan alone (B = 1, 4 heads of 64, gated_deltanet's shape), then
whole fp32 prefills of gated_deltanet (batch 1, no gradient, use_cache=False, as bench.throughput) with the floor
before every call, the extension swapped per call, the sides' order alternating by round, steady heap.

    python results/speed/delta_scan_wide_ab.py BASE_COMMIT [rounds] [length ...]

The diff applies to 4444f15's sources (the change is in the code from the commit after it); the run kept in the
.txt beside this used 4444f15.
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
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
lengths = [int(n) for n in sys.argv[3:]] or [2048, 16384]
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
base = build_native(f"delta_base_{base_commit}", base_commit)
variant = build_native(f"delta_wide_{base_commit}", base_commit, Path(__file__).with_name("delta_scan_wide.diff"))

torch.manual_seed(0)
T = 2048
q, k = (torch.nn.functional.normalize(torch.randn(1, T, 4, 64), dim=-1) for _ in range(2))
v = torch.randn(1, T, 4, 64)
beta = torch.rand(1, T, 4)
log_decay = -torch.exp(torch.randn(1, T, 4) - 2)
state = torch.randn(1, 4, 64, 64) * 0.1
outputs = [m.delta_scan(q, k, v, beta, log_decay, 0.125, state, DENORMALS.exp_floor) for m in (base, variant)]
print(f"  outputs and state identical: {all(torch.equal(a, b) for a, b in zip(*outputs))}")
alone = {"base": [], "variant": []}
for _ in range(40):
    for side, compiled in (("base", base), ("variant", variant)):
        start = time.perf_counter()
        compiled.delta_scan(q, k, v, beta, log_decay, 0.125, None, DENORMALS.exp_floor)
        alone[side].append(time.perf_counter() - start)
print(f"  the scan alone, T = {T}: base {1e3 * statistics.median(alone['base'][3:]):.3f} ms, "
      f"variant {1e3 * statistics.median(alone['variant'][3:]):.3f} ms")

teacher = embedded_shape_teacher()
floor = build_floor(teacher)
model = build_student(teacher, "gated_deltanet", init="random", seed=0).eval()
for length in lengths:
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
    print(f"  gated_deltanet prefill {length}: x floor base {statistics.median(ratio['base']):.3f}, variant "
          f"{statistics.median(ratio['variant']):.3f}; base / variant per round {statistics.median(per_round):.3f} "
          f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})")
