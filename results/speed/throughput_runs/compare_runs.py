"""Repeated runs of `python -m bench.throughput --student all --repeats 7|11 --threads 2` side by side: one row per
student, one column group per run, so the spread of each ratio and verdict between runs of (nearly) the same code
can be read off. The runs kept here differ in code only in the benchmark's FLOP count and verdict rule (848c497,
21a8ea1, d3fb851), in gated_deltanet/mamba decode (bf3153d, after 0f8987d) and in the delta rule's triangular
solves (3425af6, 11 repeats: the committed results/throughput_cpu.json at the sixth stop). `throughput_cpu_7a4124f`
(11 repeats, the grid's AVX-512 machine type, like the five before it) was the committed file until the twelfth stop;
`throughput_cpu_avx2_2b8f9c0` is the same code for every timed path on another CPU (AMD EPYC, AVX2, no bf16 kernels),
the machine type of the committed file since. `throughput_cpu_avx2_bdb258d` (11 repeats: the head-norm, WY-sharing
and D-skip changes since 7a4124f) ran in a slow session (the floor's prefill of 2,048 tokens 225 ms); the committed
run `throughput_cpu_avx2_913754e` (the same code for every timed path, 11 repeats) in a quiet one on the same machine
type (144 ms); it was the committed file until the fifteenth stop. The committed file after it (430a34a: the stacked
projections and kept weight stacks of 43a51cf) ran on an Intel Xeon (AVX-512, 260 MiB L3; floor 89 ms).
`throughput_cpu_avx2_98ed2af` (11 repeats, 16:28-16:47 UTC on 2026-12-04) is the code of the nineteenth stop
(gated_deltanet's one-cache featurize of 66e497a, autocast entered only when on) on the AMD EPYC type again, not
quiet by the floor's prefill of 2,048 tokens (181 ms). `throughput_cpu_af10dd2` (Intel Xeon, AVX-512) was the
committed file until the twentieth stop; `throughput_cpu_avx2_0d30a8b` (AMD EPYC: xlstm's one-product decode
step, the kept stacks' cheaper check, gated_deltanet's one normalise; its `activity` says other processes and steal
took 0.2% and 0.3% of the CPUs' time, yet its floor took 180 ms at 2,048) was committed for an hour; the committed
file until the twenty-first stop was the run at a47d8d5 (`throughput_cpu_avx2_a47d8d5`) on the same machine, the first
with every student's decode step as one compiled call (`kernels/native`). `throughput_cpu_avx2_be21813` is the first
with every prompt's recurrence and short convolution as compiled passes; `throughput_cpu_avx2_87c6835` the same timed
code with prefill FLOPs counted in the recurrences' torch chunk forms; fd96b3d has the delta rule scan's read-only
pass with two accumulators; 77e70e0, 2f9efd8 and efabf92 the compiled token shift, read-out norm and MetaLA
augmentation. 4770de2 (`results/throughput_cpu_avx2.json`, the committed file until the twenty-fifth stop and since the twenty-sixth the
AVX2 machine type's table) is the first whose ratios to the floor (prefill) and to the teacher
at 1k (decode) divide by the anchor's runs right before and after each call (`ratio_spread.py` beside this file
prints each run's per-round spread); this script's ratios are of medians, as for every run.
`throughput_cpu_39b18a8` is the same timed code on an Intel Xeon with AVX-512 and AMX (bf16 instructions); `throughput_cpu_38d3917`
the same with 16-wide product blocks in the AVX-512 build (since reverted); `throughput_cpu_1c8f4bb` the final code
of the twenty-fifth stop; the committed file now is the run at e48eeb5 on that Xeon type.
`throughput_cpu_epyc_avx512_812ffb3` and `results/throughput_cpu_epyc_avx512.json` (20fc708, the same timed code, an
hour later) are a third machine type, an AMD EPYC with AVX-512 and AVX512-BF16.

    python results/speed/throughput_runs/compare_runs.py results/speed/throughput_runs/*.json results/throughput_cpu.json \
        results/throughput_cpu_avx2.json
"""
import json
import sys


def row(doc, name):
    models = doc["models"]
    floor, teacher, m = models["floor"], models["teacher"], models[name]
    prefill = lambda r, n: r["prefill"][n]["median_s"]
    decode = lambda r, n: r["decode"][n]["ms_per_token"]
    return (f"{prefill(m, '2048') / prefill(floor, '2048'):.2f} / {prefill(m, '16384') / prefill(floor, '16384'):.2f}",
            f"{prefill(m, '1024') / prefill(teacher, '1024'):.2f}",
            f"{decode(m, '1024') / decode(teacher, '1024'):.2f}",
            f"{decode(m, '32768') / decode(m, '1024'):.2f}")


def label(doc):  # commit, date, the floor's prefill of 2,048 tokens and, where recorded, others' share of the CPUs
    activity = doc.get("activity") or {}
    others = f", others {100 * activity['others_share']:.1f}%" if activity.get("others_share") is not None else ""
    floor_ms = 1e3 * doc["models"]["floor"]["prefill"]["2048"]["median_s"]
    return f"{doc['machine']['commit']} ({doc['date'][:16]}, floor {floor_ms:.0f} ms{others})"


docs = [json.load(open(path)) for path in sys.argv[1:]]
docs.sort(key=lambda d: d["date"])
students = docs[-1]["settings"]["students"]
print("Per run (commit, date), ratios of medians: prefill × floor at 2,048 / 16,384; prefill / teacher at 1,024; decode / teacher at 1k;"
      " decode 32k / 1k.\n")
print("| student | " + " | ".join(label(d) for d in docs) + " |")
print("|---|" + "---|" * len(docs))
for name in students:
    if name == "attention":
        continue
    print(f"| {name} | " + " | ".join("; ".join(row(d, name)) for d in docs) + " |")
