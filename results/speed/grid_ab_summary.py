"""Summarise `grid_wall_time_ab.jsonl`: each run at a new commit against the run of the same student and init
at the base commit (e262c35, the grid's, unless --base) that followed it (the A/B script alternates new, old),
as run time, training time and validation KL.

    python results/speed/grid_ab_summary.py [--commit c0eee3d] [--base e262c35]
"""
import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--commit", default=None, help="only pairs whose new side ran at this commit")
parser.add_argument("--base", default="e262c35", help="the old side's commit (default: the paper grid's)")
parser.add_argument("--file", default=Path(__file__).with_name("grid_wall_time_ab.jsonl"))
args = parser.parse_args()
BASE = args.base
runs = sorted((json.loads(line) for line in Path(args.file).read_text().splitlines() if line.strip()),
              key=lambda r: r["date"])
pairs = []
for i, new in enumerate(runs):
    if new["commit"] == BASE or (args.commit and new["commit"] != args.commit):
        continue
    old = next((r for r in runs[i + 1:] if r["commit"] == BASE and r["student"] == new["student"]
                and r.get("init", "qkv_copy") == new.get("init", "qkv_copy")), None)
    if old:
        pairs.append((new, old))
print(f"| student (init) | {BASE}: run s (training s) | new: run s (training s) | run × | training × | val KL old / new |")
print("|---|---|---|---|---|---|")
for new, old in pairs:
    print(f"| {new['student']} ({new.get('init', 'qkv_copy')}) | {old['seconds']:.1f} ({old['train_seconds']:.1f}) | {new['seconds']:.1f} "
          f"({new['train_seconds']:.1f}) at {new['commit']} | {old['seconds'] / new['seconds']:.2f} | "
          f"{old['train_seconds'] / new['train_seconds']:.2f} | {old['val_kl']:.4f} / {new['val_kl']:.4f} |")
if pairs:
    total = {side: sum(p[k]["seconds"] for p in pairs) for k, side in ((1, "old"), (0, "new"))}
    train = {side: sum(p[k]["train_seconds"] for p in pairs) for k, side in ((1, "old"), (0, "new"))}
    print(f"\n{len(pairs)} pairs: run time {total['old']:,.0f} → {total['new']:,.0f} s "
          f"({total['old'] / total['new']:.2f}×), training {train['old']:,.0f} → {train['new']:,.0f} s "
          f"({train['old'] / train['new']:.2f}×)")
