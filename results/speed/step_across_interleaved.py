"""Issue 19's 2x with the host's drift taken out: the filing day's step and today's, alternated step by step.

    python results/speed/step_across_interleaved.py --old-repo OLD_WORKTREE --new-repo NEW_WORKTREE \
        [--students linear_attention,retnet,xlstm] [--stages end_to_end] [--rounds 15] [--jsonl FILE]
    python results/speed/step_across_interleaved.py --summary [--jsonl FILE]

`step_across_commits.py` pairs whole processes a minute or more apart, and on the 2-core hosts one process's steps
run up to 1.3x slower than the next one's (`step_across.md`), so a pair's ratio moves with the host as much as with
the code. Here one `step_across_commits.py --serve` process per checkout (the old one in fp32 as the issue was
filed, the new one in `auto`, the run's default) builds the same students, and this driver asks them for one step
at a time in turns, old first in even rounds and new first in odd ones, pausing between turns so that the idle
process's OpenMP threads stop spinning before the other starts. Only one process computes at a time. A turn runs
`--steps-per-turn` steps in a row and times the last, as a run's steps follow one another: a turn's first step, right
after the other process ran, is slower, the filing day's fp32 step more than today's (median first ÷ last step 0.99–1.11
against 0.99–1.03 for end_to_end), so timing it would flatter the new side (`--summary`; every step is recorded). Each round gives one old / new ratio from steps taken seconds apart; the verdict is their median, per
student and stage.

Prints a table and appends one JSON line per student and stage to `--jsonl` (default
`step_across_interleaved.jsonl` beside this file) with both sides' commits, every step time and the ratios.
Each checkout needs its own TORCH_EXTENSIONS_DIR where they build different sources (set per side here).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAUSE_S = 0.3  # between turns: time for the idle side's OpenMP threads to stop spinning and sleep

parser = argparse.ArgumentParser()
parser.add_argument("--old-repo", help="a worktree of the commit the issue was filed at (a36f2c6)")
parser.add_argument("--new-repo", help="a worktree of the commit to measure (clean)")
parser.add_argument("--old-mode", default="fp32")
parser.add_argument("--new-mode", default="auto")
parser.add_argument("--students", default="linear_attention,retnet,xlstm")
parser.add_argument("--stages", default="end_to_end")
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--warmups", type=int, default=2, help="untimed steps per side and key, after the build's own")
parser.add_argument("--steps-per-turn", type=int, default=2,
                    help="steps a side runs in a row per turn, the last one timed (a run's steps follow one another)")
parser.add_argument("--jsonl", type=Path, default=HERE / "step_across_interleaved.jsonl")
parser.add_argument("--summary", action="store_true",
                    help="print the rounds in --jsonl pooled per student and stage, by steps a turn, and exit")
args = parser.parse_args()


def summary(path: Path) -> None:
    """Per commit pair, student/stage and kind of turn (one step, or several with the last timed): each run's median
    ratio and the correlation, over its rounds, of the old side's step time with the ratio; the rounds of all those
    runs pooled (median, quartiles); every recorded step's range per side; and, where turns held several steps, how
    much longer a turn's first step took than its last (median over turns, per side) and the pooled median ratio of
    the turns' first steps, beside that of their last."""
    runs: dict = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        turn = "1" if record.get("steps_per_turn", 1) == 1 else "≥ 2"
        runs.setdefault((record["old"]["commit"], record["new"]["commit"], turn, record["key"]), []).append(record)
    print("| old | new | steps a turn | student / stage | each run's median | each run's corr(old s, ratio) | rounds | "
          "pooled median (quartiles) | old s, all steps | new s, all steps | first ÷ last step old / new | "
          "pooled median of first steps |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (old, new, turn, key), records in runs.items():
        ratios = sorted(r for record in records for r in record["ratios"])
        quartiles = statistics.quantiles(ratios, n=4)
        each = " ".join(f"{record['median_ratio']:.2f}" for record in records)
        corr = " ".join(f"{statistics.correlation(record['old']['step_s'], record['ratios']):+.2f}" for record in records)
        steps = {side: [s for record in records for turn_s in record[side].get("turns_s", [[s] for s in record[side]
                                                                                          ["step_s"]]) for s in turn_s]
                 for side in ("old", "new")}
        slower = {side: [t[0] / t[-1] for record in records for t in record[side].get("turns_s", []) if len(t) > 1]
                  for side in ("old", "new")}
        first = " / ".join(f"{statistics.median(slower[side]):.3f}" for side in ("old", "new")) if slower["old"] else "–"
        first_ratios = [o[0] / n[0] for record in records if "turns_s" in record["old"]
                        for o, n in zip(record["old"]["turns_s"], record["new"]["turns_s"])]
        first_ratio = f"{statistics.median(first_ratios):.2f}" if slower["old"] else "–"
        print(f"| {old} | {new} | {turn} | {key} | {each} | {corr} | {len(ratios)} | {statistics.median(ratios):.2f} "
              f"({quartiles[0]:.2f}–{quartiles[2]:.2f}) | {min(steps['old']):.2f}–{max(steps['old']):.2f} | "
              f"{min(steps['new']):.2f}–{max(steps['new']):.2f} | {first} | {first_ratio} |")


if args.summary:
    summary(args.jsonl)
    raise SystemExit(0)
if not (args.old_repo and args.new_repo):
    raise SystemExit("error: --old-repo and --new-repo are needed to measure (or --summary to read --jsonl)")
for repo in (args.old_repo, args.new_repo):
    if not (Path(repo) / "students").is_dir():
        raise SystemExit(f"error: {repo} is not a checkout of this project (no students/); pass a worktree")


def start(repo: str, mode: str, side: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path(repo) / ".torch_extensions"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    worker = subprocess.Popen([sys.executable, str(HERE / "step_across_commits.py"), "--repo", repo, "--mode", mode,
                               "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = worker.stdout.readline()
    if not line:
        raise SystemExit(f"error: the {side} worker ({repo}) exited before describing itself")
    return worker, json.loads(line)


def turn(worker: subprocess.Popen, key: str) -> list[float]:
    """`--steps-per-turn` steps of `key` in a row: their seconds, then the pause."""
    seconds = []
    for _ in range(args.steps_per_turn):
        worker.stdin.write(key + "\n")
        worker.stdin.flush()
        seconds.append(json.loads(worker.stdout.readline())["s"])
    time.sleep(PAUSE_S)
    return seconds


old, old_info = start(args.old_repo, args.old_mode, "old")
new, new_info = start(args.new_repo, args.new_mode, "new")
print(f"old {old_info['commit']} ({args.old_mode}), new {new_info['commit']} ({args.new_mode}, bf16 autocast "
      f"{new_info['autocast_bf16']}); CPU {new_info['cpu_model']}, {new_info['threads']} threads; "
      f"{args.rounds} rounds, alternating, {args.steps_per_turn} step(s) a turn, the last timed")
print("| student / stage | old s/step | new s/step | old ÷ new, median of rounds (range) | of the turns' first steps |")
print("|---|---|---|---|---|")
try:
    for name in args.students.split(","):
        for stage in args.stages.split(","):
            key = f"{name}/{stage}"
            for _ in range(args.warmups):
                turn(old, key)
                turn(new, key)
            old_turns, new_turns = [], []
            for round_ in range(args.rounds):
                if round_ % 2 == 0:
                    old_turns.append(turn(old, key))
                    new_turns.append(turn(new, key))
                else:
                    new_turns.append(turn(new, key))
                    old_turns.append(turn(old, key))
            old_s, new_s = [t[-1] for t in old_turns], [t[-1] for t in new_turns]
            ratios = [o / n for o, n in zip(old_s, new_s)]
            first = [o[0] / n[0] for o, n in zip(old_turns, new_turns)]
            print(f"| {key} | {statistics.median(old_s):.3f} | {statistics.median(new_s):.3f} | "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
                  f"{statistics.median(first):.2f} |", flush=True)
            record = {"key": key, "old": {**old_info, "step_s": old_s, "turns_s": old_turns},
                      "new": {**new_info, "step_s": new_s, "turns_s": new_turns},
                      "ratios": ratios, "median_ratio": statistics.median(ratios), "rounds": args.rounds,
                      "pause_s": PAUSE_S, "steps_per_turn": args.steps_per_turn,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            with open(args.jsonl, "a") as out:
                out.write(json.dumps(record) + "\n")
finally:
    for worker in (old, new):
        worker.stdin.close()
        worker.wait(timeout=60)
