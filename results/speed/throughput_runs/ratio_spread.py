"""The spread of the per-round ratios that the throughput verdicts read, run by run: for each student, the median and
interquartile range of prefill / floor at 2,048 and 16,384, of decode / teacher at the first context and of decode at
the last context / the first (the flatness target's ratio; with --pool the floor's own too, for reference), as
`bench.perf.ratios` takes them (the anchor's neighbouring runs where the report keeps them, else the round's).

    python results/speed/throughput_runs/ratio_spread.py results/speed/throughput_runs/throughput_cpu_avx2_efabf92.json \
        results/throughput_cpu_avx2.json results/speed/throughput_runs/throughput_cpu_1c8f4bb.json \
        results/speed/throughput_runs/throughput_cpu_e48eeb5.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_812ffb3.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_20fc708.json \
        results/speed/throughput_runs/throughput_cpu_epyc_avx512_e3b4793.json results/throughput_cpu_epyc_avx512.json \
        results/speed/throughput_runs/throughput_cpu_d8eb8a6.json \
        results/speed/throughput_runs/throughput_cpu_d589907.json results/throughput_cpu.json

With --pool, the files' per-round ratios are pooled, one line per student, for draws of the same timed code on one
machine type (the files must name one CPU and capability):

    python results/speed/throughput_runs/ratio_spread.py --pool results/speed/throughput_runs/throughput_cpu_d589907.json \
        results/throughput_cpu.json results/speed/throughput_runs/throughput_cpu_714915d.json
"""
import json
import statistics
import sys

from bench.perf.ratios import per_round_ratios


def summary(ratios):
    if not ratios or len(ratios) < 2:
        return "–"
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{q2:.3f} ({q3 - q1:.3f})"


def spread(entry, reference, field):
    return summary(per_round_ratios(entry, reference, field))


def columns(doc, name):
    """A model's per-round ratios in the four columns, from one report (the floor has only its decode growth)."""
    models, contexts = doc["models"], doc["settings"]["decode_contexts"]
    first, last = str(contexts[0]), str(contexts[-1])
    m = models[name]
    growth = per_round_ratios(m["decode"][last], m["decode"][first], "ms_per_token") or []
    if name == "floor":
        return [[], [], [], growth]
    return [per_round_ratios(m["prefill"]["2048"], models["floor"]["prefill"]["2048"], "median_s") or [],
            per_round_ratios(m["prefill"]["16384"], models["floor"]["prefill"]["16384"], "median_s") or [],
            per_round_ratios(m["decode"][first], models["teacher"]["decode"][first], "ms_per_token") or [], growth]


if sys.argv[1:2] == ["--pool"]:
    docs = {path: json.load(open(path)) for path in sys.argv[2:]}
    machines = {(d["machine"].get("device_name"), d["machine"].get("cpu_capability")) for d in docs.values()}
    if len(machines) != 1:
        sys.exit(f"error: --pool needs draws from one machine type, these name {sorted(machines)}")
    first_doc = next(iter(docs.values()))
    print(f"pooled per-round ratios of {len(docs)} runs ({', '.join(d['machine']['commit'] for d in docs.values())}) "
          f"on {first_doc['machine'].get('device_name')} {first_doc['machine'].get('cpu_capability')}: "
          f"median (interquartile range), rounds")
    contexts = first_doc["settings"]["decode_contexts"]
    first, last = str(contexts[0]), str(contexts[-1])
    print(f"  {'student':16} {'prefill/floor 2048':>20} {'prefill/floor 16384':>20} {'decode/teacher ' + first:>20} "
          f"{'decode ' + last + '/' + first:>20}")
    for name in ["floor", *first_doc["settings"]["students"]]:
        pooled = [sum((columns(d, name)[c] for d in docs.values()), []) for c in range(4)]
        print(f"  {name:16} " + " ".join(f"{summary(r) + f' {len(r)}':>20}" for r in pooled))
    sys.exit(0)

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
