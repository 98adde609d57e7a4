"""`python -m bench.sweep --grid paper`: a grid of `bench.run` configurations, resumable and shardable.

A sweep is a Python list of run configurations (student, init, seed, extra flags). Finished runs (their
record exists) are skipped, so a sweep can be stopped and restarted, in parts across sessions;
`--shard i/n` takes every n-th configuration starting at i, to split a grid across machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bench.distill import run as run_lib
from bench.errors import BenchError, Parser, UsageError, fail

PAPER_STUDENTS = ("mamba", "linear_attention", "rwkv", "retnet", "gla", "xlstm", "metala", "gated_deltanet")
PAPER_INITS = ("random", "qkv_copy", "qkv_copy+matrix_mixing")


@dataclass(frozen=True)
class RunConfig:
    student: str
    init: str
    seed: int
    flags: tuple[str, ...] = field(default_factory=tuple)

    def argv(self, common: list[str]) -> list[str]:
        return ["--student", self.student, "--init", self.init, "--seed", str(self.seed), *self.flags, *common]


GRIDS: dict[str, list[RunConfig]] = {
    # The study's grid: eight students × {random, QKV copy, QKV copy + matrix mixing} × three seeds, seed by seed.
    "paper": [RunConfig(s, i, seed) for seed in (0, 1, 2) for i in PAPER_INITS for s in PAPER_STUDENTS],
    # What hidden-state alignment adds: QKV copy without that stage (the claims table compares it with "paper").
    "no_hidden": [RunConfig(s, "qkv_copy", seed, ("--stages", "attention_output,end_to_end"))
                  for seed in (0, 1, 2) for s in PAPER_STUDENTS],
    "smoke": [RunConfig(s, "qkv_copy", 0) for s in ("gla", "mamba")],
    # Hybrids: every student pure and with the one attention layer that the KL ranking says matters most.
    "hybrid": [RunConfig(s, "qkv_copy", 0, flags) for s in PAPER_STUDENTS
               for flags in ((), ("--keep-attention-count", "1", "--select", "kl"))],
}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r} is not i/n (e.g. 0/4)") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def record_exists(config: RunConfig, common: list[str]) -> tuple[bool, str]:
    """Whether this configuration's record is already written (its run name, which carries a hash of every
    setting that changes the result, decides the file)."""
    args = run_lib.build_parser().parse_args(config.argv(common))
    settings = run_lib.settings_from_args(args)
    return (args.results_dir / "runs" / f"{settings.run_name}.json").exists(), settings.run_name


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    """One run here; a crash is recorded as a failed run with its last line, and the sweep goes on."""
    try:
        return run_lib.main(argv), ""
    except Exception as error:  # noqa: BLE001 - one failing run must not end the grid
        return 1, "".join(traceback.format_exception_only(type(error), error)).strip()


def _run_in_subprocess(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "bench.run", *argv], capture_output=True, text=True)
    lines = (done.stderr or "").strip().splitlines()
    return done.returncode, lines[-1] if lines and done.returncode else ""


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.sweep", description=__doc__.splitlines()[0],
                    epilog="flags after -- go to every `bench.run`, e.g. -- --preset tiny")
    parser.add_argument("--grid", default="paper", help=f"one of: {', '.join(GRIDS)}")
    parser.add_argument("--shard", default="0/1", help="i/n: this machine's share of the grid")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once on this machine, each in its own process with its share of the cores")
    parser.add_argument("--dry-run", action="store_true", help="list what would run and what is done")
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    try:
        args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
        if args.grid not in GRIDS:
            raise UsageError(f"unknown grid {args.grid!r}; choose one of: {', '.join(GRIDS)}")
        if args.workers < 1:
            raise UsageError(f"--workers must be positive, got {args.workers}")
        index, count = parse_shard(args.shard)
        configs = GRIDS[args.grid][index::count]
        status = [(config, *record_exists(config, common)) for config in configs]
    except BenchError as error:
        return fail(error)
    todo = [(config, name) for config, done, name in status if not done]
    print(f"grid {args.grid} shard {args.shard}: {len(configs)} runs, {len(configs) - len(todo)} done, "
          f"{len(todo)} to run", flush=True)
    if args.dry_run:
        for _, done, name in status:
            print(f"  {'done' if done else 'todo'}  {name}")
        return 0
    # Each worker gets its share of the cores: two torch processes with two threads each on two cores run ~10×
    # slower than with one thread each.
    threads = [] if "--threads" in common else ["--threads", str(max(1, (os.cpu_count() or 1) // args.workers))]
    runner = _run_in_process if args.workers == 1 else _run_in_subprocess
    failed = []

    def one(item):
        number, (config, name) = item
        started = time.time()
        print(f"[{number}/{len(todo)}] {name}", flush=True)
        code, why = runner(config.argv(common + threads))
        print(f"[{number}/{len(todo)}] {name}: exit {code}, {time.time() - started:.0f} s"
              + (f" ({why})" if why else ""), flush=True)
        if code != 0:
            failed.append(name)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(one, enumerate(todo, 1)))
    if failed:
        print(f"error: {len(failed)} of {len(todo)} runs failed: {', '.join(sorted(failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
