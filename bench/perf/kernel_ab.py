"""A/B timing of the torch chunk forms against another checkout, interleaved in one process.

    git worktree add /tmp/base <ref>
    python -m bench.perf.kernel_ab --base-dir /tmp/base [--cases lr:head:2048,dr:head:8192] [--repeats 12]

On a shared 2-core machine the same kernel's time moves by ±20% between runs, so separate benchmark runs
cannot show a 10% change. Here the base and the working tree's `chunk` forms alternate call by call on the
same inputs (forward every repeat, forward+backward every third), and min / median are printed side by side.
The base's `linear_recurrence/chunk.py` and `delta_rule/chunk.py` are loaded from its files; the delta rule's
import of the linear-recurrence helpers is pointed at the base's copy.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from bench.provenance import header
from bench.perf.kernel_bench import make_inputs

OPS = {"lr": "linear_recurrence", "dr": "delta_rule"}
DEFAULT_CASES = ("lr:head:2048,lr:channel:2048,lr:channel_edge:2048,lr:bonus:2048,dr:head:2048,dr:head_strong:2048,"
                 "lr:head:8192,lr:channel:8192,dr:head:8192")


def load_base(base_dir: Path) -> dict:
    """The base checkout's chunk functions, loaded from its files under private module names."""
    lr_path = base_dir / "kernels" / "linear_recurrence" / "chunk.py"
    dr_path = base_dir / "kernels" / "delta_rule" / "chunk.py"
    if not lr_path.is_file() or not dr_path.is_file():
        raise FileNotFoundError(f"{base_dir} has no kernels/*/chunk.py; pass a checkout of this repository")
    spec = importlib.util.spec_from_file_location("_base_lr_chunk", lr_path)
    lr = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = lr
    spec.loader.exec_module(lr)
    dr = types.ModuleType("_base_dr_chunk")
    source = dr_path.read_text().replace("from kernels.linear_recurrence.chunk import", "from _base_lr_chunk import")
    exec(compile(source, str(dr_path), "exec"), dr.__dict__)
    return {"linear_recurrence": lr.linear_recurrence_chunk, "delta_rule": dr.delta_rule_chunk}


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


def compare(op: str, decay: str, T: int, base, new, repeats: int) -> dict:
    args = make_inputs(op, decay, 1, T, 4, 64, "cpu", torch.float32, grad=False)
    grad_args = make_inputs(op, decay, 1, T, 4, 64, "cpu", torch.float32, grad=True)
    with torch.no_grad():  # like with like: both forms must give the same output before either is timed
        reference, candidate = base(**args)[0], new(**args)[0]
    difference = ((candidate - reference).abs().max() / reference.abs().max().clamp_min(1.0)).item()
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
    args = parser.parse_args(argv)
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
    for op, decay, T in cases:
        r = compare(op, decay, T, base[op], new[op], args.repeats)
        b, n = r["base"], r["new"]
        print(f"{op:18} {decay:15} {T:6} | base {b['fwd_min']:7.2f} {b['fwd_median']:7.2f} {b['fwdbwd_min']:8.2f}"
              f" | new {n['fwd_min']:7.2f} {n['fwd_median']:7.2f} {n['fwdbwd_min']:8.2f}"
              f" | median fwd x{b['fwd_median'] / n['fwd_median']:.2f} | {r['output_difference']:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
