"""Where a set of run records' time went: each phase's summed seconds (`phase_seconds` of `bench.run`'s records),
the runs' summed time, and the runs matched by name across the sets given, side by side.

    python results/speed/phase_totals.py RECORDS_DIR [RECORDS_DIR ...] [--seeds 0]

A RECORDS_DIR holds `*.json` run records (a `--results-dir`'s `runs/`). Only runs present in every set are summed,
so the sets compare like for like; each set's commits and first and last dates are printed with it.
"""
import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("dirs", nargs="+", type=Path)
parser.add_argument("--seeds", help="only these seeds (comma-separated)")
args = parser.parse_args()
seeds = None if args.seeds is None else {f"seed{s}" for s in args.seeds.split(",")}

sets = []
for directory in args.dirs:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
    sets.append({name: r for name, r in records.items() if seeds is None or name.rsplit("__", 1)[-1] in seeds})
common = sorted(set.intersection(*(set(s) for s in sets)))
phases = sorted({phase for s in sets for name in common for phase in s[name].get("phase_seconds", {})})
print(f"{len(common)} runs in every set")
header = f"{'phase':20s}" + "".join(f"{d.parent.name + '/' + d.name:>34s}"[-34:] for d in args.dirs)
print(header)
for phase in phases + ["(run seconds)"]:
    cells = []
    for records in sets:
        if phase == "(run seconds)":
            total = sum(records[name]["seconds"] for name in common)
        else:
            total = sum(records[name].get("phase_seconds", {}).get(phase, 0.0) for name in common)
        cells.append(f"{total:34.1f}")
    print(f"{phase:20s}" + "".join(cells))
for directory, records in zip(args.dirs, sets):
    dates = sorted(records[name]["date"] for name in common)
    commits = sorted({records[name]["machine"]["commit"] for name in common})
    cpus = sorted({records[name]["machine"].get("device_name", "?") for name in common})
    print(f"{directory}: commits {', '.join(commits)}; {dates[0]} .. {dates[-1]}; {', '.join(cpus)}")
