"""A/B timing of the torch chunk forms against another checkout, interleaved in one process.

    git worktree add /tmp/base <ref>
    python -m bench.perf.kernel_ab --base-dir /tmp/base [--cases lr:head:2048,dr:head:8192] [--repeats 12]

On a shared 2-core machine the same kernel's time moves by ±20% between runs, so separate benchmark runs
cannot show a 10% change. Here the base and the working tree's `chunk` forms alternate call by call on the
same inputs (forward every repeat, forward+backward every third), and min / median are printed side by side.
The base's `kernels` package is imported beside ours (`load_base`). A case whose outputs differ by more than
`--tolerance` is reported and not timed; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.perf.kernel_bench import make_inputs
from bench.provenance import header

OPS = {"lr": "linear_recurrence", "dr": "delta_rule"}
DEFAULT_CASES = ("lr:head:2048,lr:channel:2048,lr:channel_edge:2048,lr:bonus:2048,dr:head:2048,dr:head_strong:2048,"
                 "lr:head:8192,lr:channel:8192,dr:head:8192")


def load_base(base_dir: Path) -> dict:
    """The base checkout's chunk functions. Its `kernels` package is imported in place of ours for the
    duration of the import (whatever its internal layout), then our modules are put back; the base's
    functions keep their own module globals, so both trees live side by side in this process."""
    if not (base_dir / "kernels" / "linear_recurrence" / "chunk.py").is_file():
        raise FileNotFoundError(f"{base_dir} has no kernels/linear_recurrence/chunk.py; pass a checkout of "
                                f"this repository")
    ours = {name: module for name, module in sys.modules.items() if name == "kernels" or name.startswith("kernels.")}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(base_dir.resolve()))
    try:
        base = {"linear_recurrence": importlib.import_module("kernels.linear_recurrence.chunk").linear_recurrence_chunk,
                "delta_rule": importlib.import_module("kernels.delta_rule.chunk").delta_rule_chunk}
    finally:
        sys.path.remove(str(base_dir.resolve()))
        for name in [n for n in sys.modules if n == "kernels" or n.startswith("kernels.")]:
            del sys.modules[name]
        sys.modules.update(ours)
    return base


def _describe(base_dir: Path) -> str:
    """The base checkout's commit (no local paths in printed results)."""
    try:
        commit = subprocess.run(["git", "-C", str(base_dir), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"commit {commit}" if commit else "a checkout without git metadata"


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(op: str, decay: str, T: int, base, new, repeats: int, tolerance: float = 1e-4) -> dict:
    args = make_inputs(op, decay, 1, T, 4, 64, "cpu", torch.float32, grad=False)
    grad_args = make_inputs(op, decay, 1, T, 4, 64, "cpu", torch.float32, grad=True)
    with torch.no_grad():  # like with like: both forms must give the same output before either is timed
        reference, candidate = base(**args)[0], new(**args)[0]
    difference = ((candidate - reference).abs().max() / reference.abs().max().clamp_min(1.0)).item()
    if not difference <= tolerance:
        return {"output_difference": difference}
    times = {"base": ([], []), "new": ([], [])}
    for r in range(repeats + 2):  # two warm-up rounds
        for name, fn in (("base", base), ("new", new)):
            with torch.no_grad():
                fwd = _seconds(lambda: fn(**args))
            with_backward = r == 0 or (r >= 2 and (r - 2) % 3 == 0)  # a warm-up, then every third repeat
            fwdbwd = _seconds(lambda: fn(**grad_args)[0].sum().backward()) if with_backward else None
            if r >= 2:
                times[name][0].append(fwd)
                if fwdbwd is not None:
                    times[name][1].append(fwdbwd)
    ms = lambda xs, f: round(1e3 * f(xs), 2)
    result = {name: {"fwd_min": ms(f, min), "fwd_median": ms(f, statistics.median), "fwdbwd_min": ms(fb, min)}
              for name, (f, fb) in times.items()}
    return {**result, "output_difference": difference}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", required=True, type=Path, help="another checkout (e.g. a git worktree)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="op:decay:T,... with op lr|dr")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative output difference timed")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    try:
        cases = [(OPS[op], decay, int(T)) for op, decay, T in (c.split(":") for c in args.cases.split(","))]
        base = load_base(args.base_dir)
    except (KeyError, ValueError):
        print("error: --cases must look like lr:head:2048,dr:head:8192 (op lr|dr)", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    new = {"linear_recurrence": importlib.import_module("kernels.linear_recurrence.chunk").linear_recurrence_chunk,
           "delta_rule": importlib.import_module("kernels.delta_rule.chunk").delta_rule_chunk}
    print(header())
    print(f"base: {_describe(args.base_dir)}; B=1, H=4, K=V=64, fp32; ms (fwd min / median, fwd+bwd min); "
          f"rel. output difference new vs base")
    differing = 0
    for op, decay, T in cases:
        r = compare(op, decay, T, base[op], new[op], args.repeats, args.tolerance)
        if "base" not in r:
            differing += 1
            print(f"{op:18} {decay:15} {T:6} | outputs differ by {r['output_difference']:.1e} > "
                  f"{args.tolerance:.0e}: not timed", flush=True)
            continue
        b, n = r["base"], r["new"]
        print(f"{op:18} {decay:15} {T:6} | base {b['fwd_min']:7.2f} {b['fwd_median']:7.2f} {b['fwdbwd_min']:8.2f}"
              f" | new {n['fwd_min']:7.2f} {n['fwd_median']:7.2f} {n['fwdbwd_min']:8.2f}"
              f" | median fwd x{b['fwd_median'] / n['fwd_median']:.2f} | {r['output_difference']:.1e}", flush=True)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
