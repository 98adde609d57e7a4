"""Where a number was measured: device, threads, versions, commit — printed beside every benchmark."""
from __future__ import annotations

import hashlib
import importlib
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    if os.environ.get("DISTILL_BENCH_COMMIT"):  # a copy of the tree without .git (e.g. a GPU machine)
        return os.environ["DISTILL_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def machine() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "device_name": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **{name: _version(name) for name in ("triton", "fla") if _version(name)},
        "commit": git_commit(),
    }


def weights_fingerprint(path: str, model=None) -> str:
    """First 12 hex digits of sha256 over a local model's weight files, or the hub revision it came from."""
    directory = Path(path).expanduser()
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")) if directory.is_dir() else []
    if not files:
        revision = getattr(getattr(model, "config", None), "_commit_hash", None)
        return f"rev-{revision[:12]}" if revision else "unknown"
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def header() -> str:
    return " | ".join(f"{k}={v}" for k, v in machine().items())


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """Median and spread (min, max) of wall time in seconds, synchronising CUDA around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def peak_memory(fn: Callable[[], object], device: str) -> tuple[object, int]:
    """fn's result and its peak memory in bytes above what was allocated before it: CUDA's
    `max_memory_allocated`, or on CPU the growth of peak RSS (meaningful in a fresh process only)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        value = fn()
        return value, torch.cuda.max_memory_allocated() - base
    import resource

    with open("/proc/self/statm") as f:
        base = int(f.read().split()[1]) * resource.getpagesize()
    value = fn()
    return value, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # Linux: KiB


def in_fresh_process(fn: Callable, *args):
    """fn(*args) in a spawned process, so a CPU peak-RSS reading belongs to that call alone."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def loss_suite_main(argv, description: str, run: Callable[[str, bool], list[dict]]) -> int:
    """The shared CLI of the loss benchmarks: --device, --quick, --json; exit 1 if a row is incorrect."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (seconds), for smoke tests")
    parser.add_argument("--json", help="also write the rows (with the machine header) to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    rows = run(args.device, args.quick)
    if args.json:
        from bench.io import atomic_write_json
        atomic_write_json(args.json, {"machine": machine(), "rows": rows})
    return 0 if all(r["correct"] for r in rows) else 1
