"""The spread of the per-round ratios that the throughput verdicts read, run by run: for each student, the median and
interquartile range of prefill / floor at 2,048 and 16,384 and of decode / teacher at the first context, as
`bench.perf.ratios` takes them (the anchor's neighbouring runs where the report keeps them, else the round's).

    python results/speed/throughput_runs/ratio_spread.py results/speed/throughput_runs/throughput_cpu_avx2_efabf92.json \
        results/throughput_cpu_avx2.json results/speed/throughput_runs/throughput_cpu_1c8f4bb.json \
        results/speed/throughput_runs/throughput_cpu_e48eeb5.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_812ffb3.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_20fc708.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_e3b4793.json results/throughput_cpu_epyc_avx512.json \
        results/speed/throughput_runs/throughput_cpu_d8eb8a6.json \
        results/speed/throughput_runs/throughput_cpu_d589907.json results/throughput_cpu.json
"""
import json
import statistics
import sys

from bench.perf.ratios import per_round_ratios


def spread(entry, reference, field):
    ratios = per_round_ratios(entry, reference, field)
    if not ratios or len(ratios) < 2:
        return "–"
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{q2:.3f} ({q3 - q1:.3f})"


for path in sys.argv[1:]:
    doc = json.load(open(path))
    models, settings = doc["models"], doc["settings"]
    first = str(settings["decode_contexts"][0])
    anchored = "anchor_times_s" in next(iter(models[settings["students"][0]]["prefill"].values()))
    print(f"{path}: commit {doc['machine']['commit']}, {doc['date']}, "
          f"{'anchored' if anchored else 'round'} ratios; median (interquartile range) of the per-round ratios")
    print(f"  {'student':16} {'prefill/floor 2048':>20} {'prefill/floor 16384':>20} {'decode/teacher ' + first:>20}")
    for name in settings["students"]:
        m = models[name]
        cells = [spread(m["prefill"]["2048"], models["floor"]["prefill"]["2048"], "median_s"),
                 spread(m["prefill"]["16384"], models["floor"]["prefill"]["16384"], "median_s"),
                 spread(m["decode"][first], models["teacher"]["decode"][first], "ms_per_token")]
        print(f"  {name:16} " + " ".join(f"{c:>20}" for c in cells))
