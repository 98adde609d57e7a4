"""Summary of `step_across_commits.jsonl`: old and new commits' step times, paired as they were run.

    python results/speed/step_across_summary.py --old a36f2c6 --new 689d283 [--file results/speed/step_across_commits.jsonl]

`--new` may name several commits, comma-separated, whose training code is the same (e.g. commits apart only in
documentation), to take their pairs together.

A pair is an --old line followed directly by a --new line (the probe's A, B, A, B order). Prints, per
student/stage, each side's median step time and the old/new ratio of every pair, then their median; then, per
student, the training time of a whole run with `--run-steps` steps per stage at each side's step times, as the
old/new ratio of every pair and their median. The default `--run-steps` is the default run on the day issue 19 was
filed (a36f2c6: `--preset default`, 100 steps of 8 × 512 tokens split by the reference proportions into 5 of
hidden alignment and 94 end to end), the run whose tokens/s the issue asks to double.
"""
import argparse
import json
import statistics
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--old", required=True)
parser.add_argument("--new", required=True, help="a commit, or several with the same training code, comma-separated")
parser.add_argument("--run-steps", default="hidden_alignment=5,end_to_end=94",
                    help="steps per stage of the run to total (stage=steps, comma-separated)")
parser.add_argument("--file", default=str(Path(__file__).with_name("step_across_commits.jsonl")))
args = parser.parse_args()
lines = [json.loads(line) for line in Path(args.file).read_text().splitlines() if line.strip()]
pairs = [(a, b) for a, b in zip(lines, lines[1:]) if a["commit"] == args.old and b["commit"] in args.new.split(",")]
if not pairs:
    raise SystemExit(f"error: no {args.old} line followed by a {args.new} line in {args.file}")
first, last = pairs[0][0], pairs[-1][1]
print(f"{len(pairs)} pairs, {first['date']} … {last['date']}; old {args.old} ({first['mode']}), new {args.new} "
      f"({last['mode']}, bf16 autocast: {last.get('autocast_bf16', last['mode'] == 'default')}); "
      f"CPU {last.get('cpu_model', 'model not recorded')}, capability {last.get('cpu_capability', 'not recorded')}, torch {last['torch']}, {last['threads']} threads")
print()
print("| student / stage | old s/step | new s/step | old ÷ new per pair | median |")
print("|---|---|---|---|---|")
keys = list(dict.fromkeys(key for a, b in pairs for key in a["step_s"] if key in b["step_s"]))
for key in keys:  # each over the pairs that timed it (a probe may time a subset of the students)
    timed = [(a, b) for a, b in pairs if key in a["step_s"] and key in b["step_s"]]
    old = [a["step_s"][key] for a, _ in timed]
    new = [b["step_s"][key] for _, b in timed]
    ratios = [o / n for o, n in zip(old, new)]
    print(f"| {key} | {statistics.median(old):.3f} | {statistics.median(new):.3f} | "
          f"{' '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")

run_steps = {stage: int(steps) for stage, _, steps in (item.partition("=") for item in args.run_steps.split(","))}
students = list(dict.fromkeys(key.split("/")[0] for key in keys))
print()
print(f"Whole run's training time, {', '.join(f'{stage} {steps} steps' for stage, steps in run_steps.items())}:")
print()
print("| student | old s | new s | old ÷ new per pair | median |")
print("|---|---|---|---|---|")


def run_seconds(line, student):
    return sum(steps * line["step_s"][f"{student}/{stage}"] for stage, steps in run_steps.items())


for student in students:
    timed = [(a, b) for a, b in pairs if all(f"{student}/{stage}" in line["step_s"] for stage in run_steps
                                             for line in (a, b))]
    if not timed:
        continue
    old = [run_seconds(a, student) for a, _ in timed]
    new = [run_seconds(b, student) for _, b in timed]
    ratios = [o / n for o, n in zip(old, new)]
    print(f"| {student} | {statistics.median(old):.1f} | {statistics.median(new):.1f} | "
          f"{' '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")
