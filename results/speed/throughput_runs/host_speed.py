"""Does a student's prefill-over-floor ratio depend on how fast the host multiplies? For every throughput run given
that kept glibc's heap steady, one line per run, per machine type sorted by the floor's prefill time (a faster host
first): the floor's time at 2,048 and 16,384 tokens and the chosen students' ratios (medians of the per-round ratios,
as `ratio_spread.py` takes them), then each type's rank correlation of the floor's time with each ratio.

    python results/speed/throughput_runs/host_speed.py --students rwkv,gated_deltanet \
        results/speed/throughput_runs/*.json results/throughput_cpu*.json

Runs on the heap as it comes are left out (their floor pays page faults that depend on what ran before it) and named.
"""
import argparse
import json
import statistics
from collections import defaultdict

from bench.perf.ratios import per_round_ratios

LENGTHS = ("2048", "16384")


def ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    for rank, index in enumerate(order):
        out[index] = float(rank)
    return out


def spearman(xs, ys):
    """Spearman's rank correlation (no ties expected in times measured to the microsecond); None under 3 points."""
    if len(xs) < 3:
        return None
    return statistics.correlation(ranks(xs), ranks(ys))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", default="rwkv,gated_deltanet")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    students = args.students.split(",")
    by_type, left_out = defaultdict(list), []
    for path in args.files:
        doc = json.load(open(path))
        if doc.get("schema") is None or "models" not in doc or not set(LENGTHS) <= set(doc["models"]["floor"]["prefill"]):
            continue  # not a throughput report, or one timed at other lengths (another teacher's shape)
        if doc["settings"].get("heap") != "steady":
            left_out.append(path.rsplit("/", 1)[-1])
            continue
        models, machine = doc["models"], doc["machine"]
        floor = models["floor"]["prefill"]
        row = {"file": path.rsplit("/", 1)[-1], "commit": machine["commit"], "date": doc["date"][:16],
               "others": doc.get("activity", {}).get("others_share"),
               "floor": [floor[n]["median_s"] * 1e3 for n in LENGTHS]}
        for name in students:
            row[name] = [statistics.median(per_round_ratios(models[name]["prefill"][n], floor[n], "median_s"))
                         for n in LENGTHS]
        kind = f"{machine.get('device_name')} {machine.get('cpu_capability')}" + \
            (", bf16" if machine.get("cpu_bf16_kernels") else "")
        by_type[kind].append(row)
    for kind, rows in by_type.items():
        rows.sort(key=lambda r: r["floor"][0])
        print(f"{kind}: {len(rows)} runs with the heap steady, the fastest floor first")
        print(f"  {'file':44} {'commit':8} {'date':16} {'others':>6}  {'floor ms 2048':>13} {'16384':>6}  "
              + "  ".join(f"{name + ' 2048 / 16384':>26}" for name in students))
        for r in rows:
            others = "–" if r["others"] is None else f"{100 * r['others']:.1f}%"
            print(f"  {r['file']:44} {r['commit']:8} {r['date']:16} {others:>6}  {r['floor'][0]:13.1f} "
                  f"{r['floor'][1]:6.0f}  " + "  ".join(f"{r[n][0]:>17.3f} / {r[n][1]:.3f}" for n in students))
        for name in students:
            cells = []
            for i, n in enumerate(LENGTHS):
                rho = spearman([r["floor"][i] for r in rows], [r[name][i] for r in rows])
                cells.append(f"{n} {'–' if rho is None else f'{rho:+.2f}'}")
            print(f"  rank correlation of the floor's time with {name}'s ratio: " + ", ".join(cells))
    if left_out:
        print(f"left out (heap as it comes): {', '.join(sorted(left_out))}")


if __name__ == "__main__":
    main()
