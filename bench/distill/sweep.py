"""`python -m bench.sweep --grid paper`: a grid of `bench.run` configurations, resumable and shardable.

A sweep is a Python list of run configurations (student, init, seed, extra flags). Finished runs (their
record exists) are skipped, so a sweep can be stopped and restarted, in parts across sessions;
`--shard i/n` takes every n-th configuration starting at i, to split a grid across machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from bench.distill import run as run_lib

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
    # The study's grid: eight students × {random, QKV copy, QKV copy + matrix mixing} × two seeds.
    "paper": [RunConfig(s, i, seed) for seed in (0, 1) for i in PAPER_INITS for s in PAPER_STUDENTS],
    "smoke": [RunConfig(s, "qkv_copy", 0) for s in ("gla", "mamba")],
}


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise run_lib.UsageError(f"--shard {text!r} is not i/n (e.g. 0/4)") from None
    if not 0 <= index < count:
        raise run_lib.UsageError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def record_exists(config: RunConfig, common: list[str]) -> tuple[bool, str]:
    """Whether this configuration's record is already written (its run name decides the file)."""
    args = run_lib.build_parser().parse_args(config.argv(common))
    settings = run_lib.settings_from_args(args)
    return (args.results_dir / "runs" / f"{settings.run_name}.json").exists(), settings.run_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.splitlines()[0],
                                     epilog="flags after -- go to every `bench.run`, e.g. -- --preset tiny")
    parser.add_argument("--grid", default="paper", help=f"one of: {', '.join(GRIDS)}")
    parser.add_argument("--shard", default="0/1", help="i/n: this machine's share of the grid")
    parser.add_argument("--dry-run", action="store_true", help="list what would run and what is done")
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.grid not in GRIDS:
            raise run_lib.UsageError(f"unknown grid {args.grid!r}; choose one of: {', '.join(GRIDS)}")
        index, count = parse_shard(args.shard)
        configs = GRIDS[args.grid][index::count]
        status = [(config, *record_exists(config, common)) for config in configs]
    except run_lib.UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    todo = [(config, name) for config, done, name in status if not done]
    print(f"grid {args.grid} shard {args.shard}: {len(configs)} runs, {len(configs) - len(todo)} done, "
          f"{len(todo)} to run", flush=True)
    if args.dry_run:
        for _, done, name in status:
            print(f"  {'done' if done else 'todo'}  {name}")
        return 0
    failed = []
    for number, (config, name) in enumerate(todo, 1):
        started = time.time()
        print(f"[{number}/{len(todo)}] {name}", flush=True)
        code = run_lib.main(config.argv(common))
        print(f"[{number}/{len(todo)}] {name}: exit {code}, {time.time() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"error: {len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
