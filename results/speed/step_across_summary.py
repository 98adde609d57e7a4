"""Summary of `step_across_commits.jsonl`: old and new commits' step times, paired as they were run.

    python results/speed/step_across_summary.py --old a36f2c6 --new 689d283 [--file results/speed/step_across_commits.jsonl]

A pair is an --old line followed directly by a --new line (the probe's A, B, A, B order). Prints, per
student/stage, each side's median step time and the old/new ratio of every pair, then their median.
"""
import argparse
import json
import statistics
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--old", required=True)
parser.add_argument("--new", required=True)
parser.add_argument("--file", default=str(Path(__file__).with_name("step_across_commits.jsonl")))
args = parser.parse_args()
lines = [json.loads(line) for line in Path(args.file).read_text().splitlines() if line.strip()]
pairs = [(a, b) for a, b in zip(lines, lines[1:]) if a["commit"] == args.old and b["commit"] == args.new]
if not pairs:
    raise SystemExit(f"error: no {args.old} line followed by a {args.new} line in {args.file}")
first, last = pairs[0][0], pairs[-1][1]
print(f"{len(pairs)} pairs, {first['date']} … {last['date']}; old {args.old} ({first['mode']}), new {args.new} "
      f"({last['mode']}, bf16 autocast: {last.get('autocast_bf16', last['mode'] == 'default')}); "
      f"CPU capability {last.get('cpu_capability', 'not recorded')}, torch {last['torch']}, {last['threads']} threads")
print()
print("| student / stage | old s/step | new s/step | old ÷ new per pair | median |")
print("|---|---|---|---|---|")
for key in pairs[0][0]["step_s"]:
    old = [a["step_s"][key] for a, _ in pairs]
    new = [b["step_s"][key] for _, b in pairs]
    ratios = [o / n for o, n in zip(old, new)]
    print(f"| {key} | {statistics.median(old):.3f} | {statistics.median(new):.3f} | "
          f"{' '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")
