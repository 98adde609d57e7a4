"""The bad inputs and interruptions a demanding new user tries, run as that user would: each command in a
fresh process on a scratch directory, its exit code and first line of stderr recorded.

    python tests/reliability_probes.py OUT.md      # a Markdown table (docs/reliability.md embeds it)

Not collected by pytest (the behaviours are asserted one by one in tests/test_bench_*.py); this is the
end-to-end record of what each input gets. Needs the embedded corpus (fetched once) and ~3 minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "bench" / "data" / "embedded_teacher"
TINY = ["--preset", "tiny", "--no-progress", "--skip-eval", "--skip-throughput", "--threads", "1"]


def command(args: list[str], cwd: Path, timeout: int = 600) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return done.returncode, (lines[-1] if lines else "")


def broken_teacher(scratch: Path, how: str) -> Path:
    target = scratch / f"teacher-{how}"
    shutil.copytree(TEACHER, target)
    weights = target / "model.safetensors"
    if how == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return target


def probes(scratch: Path) -> list[tuple[str, int, str]]:
    rows = []

    def probe(what: str, args: list[str]):
        code, line = command(args, scratch)
        rows.append((what, code, line))
        print(f"{code}  {what}: {line}", flush=True)

    run = ["bench.run", "--student", "gla", *TINY]
    for how in ("truncated", "missing"):
        teacher = broken_teacher(scratch, how)
        probe(f"`bench.run`, teacher with a {how} model.safetensors", [*run, "--teacher", str(teacher)])
        probe(f"`bench.throughput`, teacher with a {how} model.safetensors",
              ["bench.throughput", "--student", "gla", "--teacher", str(teacher), "--lengths", "64"])
        probe(f"`bench.evaluate`, model with a {how} model.safetensors", ["bench.evaluate", "--model", str(teacher)])
    data = scratch / "data"
    data.mkdir()
    (data / "empty.txt").write_text("")
    for suffix in (".txt", ".jsonl", ".parquet"):
        (data / f"noise{suffix}").write_bytes(os.urandom(5000))
    for name in ("empty.txt", "noise.txt", "noise.jsonl", "noise.parquet"):
        probe(f"`--dataset` {name}", [*run, "--dataset", str(data / name)])
    for flags in (["--mixer-option", "feature_map=nosuch"], ["--mixer-option", "nosuch=1"], ["--lr", "-1"],
                  ["--lr", "nan"], ["--lr", "0"], ["--temperature", "0"], ["--checkpoint-every", "0"],
                  ["--warmup-fraction", "-3"], ["--threads", "0"], ["--tokens", "500"]):
        student = ["--student", "linear_attention"] if "feature_map=nosuch" in flags else []
        probe(f"`{' '.join(flags)}`", [*run, *student, *flags])
    results = scratch / "results"
    (results / "runs").mkdir(parents=True)
    (results / "runs" / "list.json").write_text("[1, 2]")
    probe("`bench.figures` on a record that is valid JSON of the wrong shape",
          ["bench.figures", "--results-dir", str(results)])
    probe("`bench.leaderboard` on the same record", ["bench.leaderboard", "--results-dir", str(results)])
    common = ["--output-dir", str(scratch / "runs"), "--results-dir", str(scratch / "r")]
    probe("a run blown up by `--lr 1e6`", [*run, *common, "--run-name", "hot", "--lr", "1e6", "--checkpoint-every", "2"])
    probe("... then `--resume --lr 1e-3` from its last good checkpoint",
          [*run, *common, "--run-name", "hot", "--lr", "1e-3", "--resume"])
    probe("a run stopped with `--stop-after 3`", [*run, *common, "--run-name", "fixed", "--stop-after", "3"])
    probe("... resumed as another `--student`", [*run[:1], "--student", "mamba", *TINY, *common, "--run-name", "fixed",
                                                 "--resume"])
    probe("... resumed with another `--tokens`", [*run, *common, "--run-name", "fixed", "--resume", "--tokens", "25600"])
    probe("... resumed with its own settings", [*run, *common, "--run-name", "fixed", "--resume"])
    names = {}
    for flags in ([], ["--tokens", "25600"], ["--lr", "0.002"], ["--seq-len", "16"], ["--batch-size", "2"],
                  ["--mixer-option", "window=8"]):
        code, _ = command([*run, *common, *flags, "--stop-after", "1"], scratch)
        names[" ".join(flags) or "defaults"] = sorted(p.name for p in (scratch / "runs").iterdir() if p.is_dir())
    distinct = len({tuple(v) for v in names.values()}) == len(names)
    rows.append(("runs differing only in `--tokens`, `--lr`, `--seq-len`, `--batch-size`, `--mixer-option`", 0,
                 "each gets its own run directory" if distinct else "SOME SHARE A DIRECTORY"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", *run, *common, "--run-name", "busy", "--tokens", "204800"],
                             cwd=scratch, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    time.sleep(25)
    probe("the same run started while it is running", [*run, *common, "--run-name", "busy", "--tokens", "204800"])
    first.send_signal(signal.SIGKILL)
    first.wait()
    stale = list((scratch / "runs").glob("busy/.checkpoint-*"))
    probe("`--resume` after `kill -9`", [*run, *common, "--run-name", "busy", "--tokens", "204800", "--resume"])
    leftovers = list((scratch / "runs").glob("busy/.*-*"))
    rows.append(("staging folders after the kill / after the resume", 0, f"{len(stale)} / {len(leftovers)}"))
    return rows


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(prefix="probes-") as scratch:
        # the scratch directory's name is this machine's: the table says SCRATCH
        rows = [(what, code, line.replace(scratch, "SCRATCH")) for what, code, line in probes(Path(scratch))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    table = ["| input | exit | what the user sees (last line of stderr) |", "|---|---|---|"]
    for what, code, line in rows:
        table.append(f"| {what} | {code} | {line.replace('|', '/')[:220]} |")
    text = (f"Probed {time.strftime('%Y-%m-%d')} at commit {commit.strip()} (`python tests/reliability_probes.py`).\n\n"
            + "\n".join(table) + "\n")
    if out:
        out.write_text(text)
    print(text)
    print(json.dumps({"rows": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
