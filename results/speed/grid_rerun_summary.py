"""Compare re-run grid records with the paper grid's records of the same runs (issue 19: the grid's wall time).

    python results/speed/grid_rerun_summary.py RERUN_RESULTS_DIR [--seeds 1,2] [--json results/speed/grid_rerun_<commit>.json]

RERUN_RESULTS_DIR is the `--results-dir` of a `bench.sweep` (or `bench.run`) re-run; each of its `runs/*.json` is
matched with `results/runs/` (the grid's records, e262c35) by run name, or, where the name's settings hash differs
(since 1dfed36 it covers the resolved precision, so an fp32 re-run of a bf16 record is named apart), by teacher,
student, init, preset, seed and every other setting but the precision; each side's precision is printed. Prints
run time, training time, the matrix_mixing stage's seconds and validation KL per run (with its cell's range over the
grid's seeds: every setting but the seed) and in total, and optionally
writes them to a JSON file with both sides' commits and dates and the machine.
"""
import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
parser = argparse.ArgumentParser()
parser.add_argument("rerun", type=Path)
parser.add_argument("--json", type=Path)
parser.add_argument("--seeds", help="only the re-run's records of these seeds (comma-separated), e.g. 1")
args = parser.parse_args()
seeds = None if args.seeds is None else {int(seed) for seed in args.seeds.split(",")}



def end_to_end_rate(record: dict) -> float:
    """The end_to_end stage's tokens over its seconds (recall probes and checkpoints included, as the record has it)."""
    stage = next(s for s in record["stages"] if s["stage"] == "end_to_end")
    return round(stage["tokens"] / stage["seconds"], 1)


def config_key(name: str) -> str:
    """The run name without its settings hash: teacher__student__init__preset__seedN."""
    parts = name.split("__")
    return "__".join(parts[:4] + parts[5:])


def precision(record: dict) -> str:
    return "bf16" if record.get("bf16") else "fp32"


def stage_seconds(record: dict, stage: str) -> float | None:
    return next((s["seconds"] for s in record["stages"] if s["stage"] == stage), None)


def settings_key(record: dict, *, ignore: tuple[str, ...] = ()) -> str:
    """Every setting but the name and the precision: an ablation sharing a run's name pattern (another stage list)
    must not stand in for it."""
    skip = ("run_name", "dtype", *ignore)
    return json.dumps({k: v for k, v in record["settings"].items() if k not in skip}, sort_keys=True)


grid: dict[tuple[str, str], Path] = {}
cell_kls: dict[str, list[float]] = {}  # a cell = every setting but the seed: the grid's validation KL over its seeds
for path in (ROOT / "results" / "runs").glob("*.json"):
    record = json.loads(path.read_text())
    grid[config_key(path.stem), settings_key(record)] = path
    cell_kls.setdefault(settings_key(record, ignore=("seed",)), []).append(record["metrics"]["val_kl"])
rows = []
for new_file in sorted((args.rerun / "runs").glob("*.json")):
    new = json.loads(new_file.read_text())
    if seeds is not None and new["settings"]["seed"] not in seeds:
        continue
    old_file = ROOT / "results" / "runs" / new_file.name
    if not old_file.exists():
        old_file = grid.get((config_key(new_file.stem), settings_key(new)))
    if old_file is None:
        continue
    old = json.loads(old_file.read_text())
    rows.append({"run": new["run"], "student": new["settings"]["student"], "init": new["settings"]["init"],
                 "seed": new["settings"]["seed"],
                 "stages": "+".join(stage["stage"] for stage in new["stages"]),
                 **{side: {"seconds": rec["seconds"], "train_seconds": rec["train_seconds"], "date": rec["date"],
                           "commit": rec["machine"]["commit"], "val_kl": rec["metrics"]["val_kl"],
                           "end_to_end_tokens_per_s": end_to_end_rate(rec), "phase_seconds": rec.get("phase_seconds"),
                           "precision": precision(rec), "matrix_mixing_seconds": stage_seconds(rec, "matrix_mixing")}
                    for side, rec in (("old", old), ("new", new))},
                 "grid_seed_kls": sorted(cell_kls.get(settings_key(new, ignore=("seed",)), []))})
rows.sort(key=lambda r: r["new"]["date"])


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def against_range(value: float, kls: list[float]) -> str:
    """Where a re-run's validation KL falls against its cell's range over the grid's seeds."""
    if len(kls) < 2:
        return "–"
    low, high = min(kls), max(kls)
    if low <= value <= high:
        return "within"
    excess = value - high if value > high else value - low
    return f"{excess:+.2g} {'above' if value > high else 'below'}"  # +.2g: an excess under 5e-5 still shows


print("| student | init | old: run s (training s) | new: run s (training s) | run × | training × "
      "| matrix_mixing s old / new | end_to_end tok/s old / new | val KL old / new | grid's seeds: val KL range "
      "| new against it | precision old / new |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    o, n = r["old"], r["new"]
    init = r["init"] + ("+matrix_mixing" if "matrix_mixing" in r["stages"] and "matrix_mixing" not in r["init"] else "")
    print(f"| {r['student']} | {init} | {o['seconds']:.1f} ({o['train_seconds']:.1f}) | {n['seconds']:.1f} "
          f"({n['train_seconds']:.1f}) | {o['seconds'] / n['seconds']:.2f} | {o['train_seconds'] / n['train_seconds']:.2f} "
          f"| {_seconds(o['matrix_mixing_seconds'])} / {_seconds(n['matrix_mixing_seconds'])} "
          f"| {o['end_to_end_tokens_per_s']:,.0f} / {n['end_to_end_tokens_per_s']:,.0f} "
          f"| {o['val_kl']:.4f} / {n['val_kl']:.4f} "
          f"| {min(r['grid_seed_kls'], default=float('nan')):.4f}–{max(r['grid_seed_kls'], default=float('nan')):.4f} "
          f"| {against_range(n['val_kl'], r['grid_seed_kls'])} | {o['precision']} / {n['precision']} |")
total = {side: sum(r[side]["seconds"] for r in rows) for side in ("old", "new")}
train = {side: sum(r[side]["train_seconds"] for r in rows) for side in ("old", "new")}
if rows:
    kl = [r["new"]["val_kl"] - r["old"]["val_kl"] for r in rows]
    print(f"\n{len(rows)} runs: run time {total['old']:,.0f} → {total['new']:,.0f} s ({total['old'] / total['new']:.2f}×), "
          f"training {train['old']:,.0f} → {train['new']:,.0f} s ({train['old'] / train['new']:.2f}×); "
          f"val KL new − old {min(kl):+.4f} … {max(kl):+.4f}")
    places = [against_range(r["new"]["val_kl"], r["grid_seed_kls"]).split()[-1] for r in rows]
    print(f"val KL against the cell's range over the grid's seeds: within {places.count('within')}, "
          f"above {places.count('above')}, below {places.count('below')} of {len(rows)}")
if args.json and rows:
    first = json.loads((args.rerun / "runs" / f"{rows[0]['run']}.json").read_text())
    args.json.write_text(json.dumps({
        "what": "paper-grid runs re-run at a later commit, matched with the grid's records by run name or by configuration",
        "machine": first["machine"], "old_commits": sorted({r["old"]["commit"] for r in rows}),
        "new_commits": sorted({r["new"]["commit"] for r in rows}),
        "seeds": sorted({r["seed"] for r in rows}), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": rows, "total_seconds": total, "train_seconds": train}, indent=1) + "\n")
