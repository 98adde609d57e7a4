"""Append the run records of a `grid_wall_time_ab.sh` session to `grid_wall_time_ab.jsonl`, one line a run, in the
order the runs finished (what `grid_ab_summary.py` pairs: each new run with the base run after it).

    python results/speed/grid_ab_records.py OUT [--pairs OUT/pairs.txt]

OUT is the script's output folder (its `head/results/runs` and `old/results/runs`); `--pairs` is the script's own
printout (`head mamba rc=0 wall=... commit=...`), whose wall time each line carries as `process_wall_s`.
"""
import argparse
import json
import re
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--pairs", type=Path, help="the A/B script's printout (default OUT/pairs.txt)")
parser.add_argument("--file", type=Path, default=Path(__file__).with_name("grid_wall_time_ab.jsonl"))
args = parser.parse_args()

walls = {}
pairs = args.pairs or args.out / "pairs.txt"
for line in pairs.read_text().splitlines():
    match = re.match(r"(head|old) (\S+) rc=(\d+) wall=([\d.]+) commit=(\w+)", line)
    if match and match[3] == "0":
        walls[(match[1], match[2])] = float(match[4])

lines = []
for side in ("head", "old"):
    for path in sorted((args.out / side / "results" / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        settings, machine = record["settings"], record.get("machine", {})
        student = settings["student"]
        lines.append({
            "student": student, "init": settings["init"], "seed": settings["seed"], "preset": settings["preset"],
            "run_name": record["run"], "commit": machine.get("commit"), "date": record["date"],
            "device": machine.get("device_name"), "cpu_capability": machine.get("cpu_capability"),
            "dtype": settings.get("dtype"), "bf16": record.get("bf16"), "torch": machine.get("torch"),
            "threads": record.get("threads"),
            "seconds": record["seconds"], "train_seconds": record["train_seconds"],
            "process_wall_s": round(walls[(side, student)], 1) if (side, student) in walls else None,
            "val_kl": record["metrics"]["val_kl"],
            "stage_seconds": {s["stage"]: s["seconds"] for s in record["stages"]},
            "others_share": record.get("activity", {}).get("others_share"),
        })
lines.sort(key=lambda line: line["date"])
with open(args.file, "a") as handle:
    for line in lines:
        handle.write(json.dumps(line) + "\n")
print(f"appended {len(lines)} records to {args.file}")
