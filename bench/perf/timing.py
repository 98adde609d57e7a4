"""Timing and memory helpers shared by the benchmarks: medians with spread, peak memory, fresh processes."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable

import torch


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1,
              before: Callable[[], object] | None = None) -> dict:
    """Median and spread (min, max) of wall time in seconds, synchronising CUDA around each call.
    `before` runs ahead of every call, warm-up included, outside the timed region (e.g. to reset a cache)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        if before is not None:
            before()
        fn()
    sync()
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
            sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def time_round_robin(calls: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                     before: dict | None = None, anchor: Hashable | None = None) -> dict:
    """`time_call` for several calls taking turns, every other round in reverse (a, b, c, c, b, a, a, …): a slow
    spell of a shared machine then lands on every call alike, and a drift within a round favours none, so the
    ratios between their medians hold where back-to-back blocks would not. `before[name]` runs ahead of each of
    that call's runs, outside the timed region. `times_s` lists each call's times round by round, so the i-th
    times of two calls were taken in the same round (paired ratios).

    `anchor` (one of the calls, the one the others are compared with) also runs between every two others and at
    both ends of a round (x, a, x, b, x, …). Each other call's `anchor_times_s` holds, round by round, the mean of
    the anchor's two runs on either side of it, so a ratio to the anchor divides times taken seconds apart rather
    than a round apart (on a machine whose speed drifts, their spread narrows several-fold); the anchor's own
    `times_s` are its per-round medians, and its entry says `anchor: True`."""
    if anchor is not None and anchor not in calls:
        raise ValueError(f"anchor {anchor!r} is not one of the calls ({', '.join(map(repr, calls))})")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    before = before or {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    anchor_times: dict[str, list[float]] = {name: [] for name in calls if name != anchor}

    def run(name: str) -> float:
        if name in before:
            before[name]()
        sync()
        start = time.perf_counter()
        calls[name]()
        sync()
        return time.perf_counter() - start

    names = list(calls)
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        if anchor is None:
            round_times = {name: run(name) for name in order}
        else:
            others = [name for name in order if name != anchor]
            anchor_runs, round_times = [run(anchor)], {}
            for name in others:
                round_times[name] = run(name)
                anchor_runs.append(run(anchor))
            round_times[anchor] = statistics.median(anchor_runs)
        if round_index < warmup:
            continue
        for name, t in round_times.items():
            times[name].append(t)
        if anchor is not None:
            for i, name in enumerate(others):
                anchor_times[name].append((anchor_runs[i] + anchor_runs[i + 1]) / 2)
    results = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": repeats,
                      "times_s": t} for name, t in times.items()}
    if anchor is not None:
        results[anchor]["anchor"] = True
        for name, t in anchor_times.items():
            results[name]["anchor_times_s"] = t
    return results


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


def loss_suite_main(argv, description: str, run: Callable[[str, bool], list[dict]],
                    devices: tuple[str, ...] = ("cpu", "cuda")) -> int:
    """The shared CLI of the suite benchmarks (losses, fused operators): --device (one of `devices`), --quick,
    --json; exit 1 if a row is incorrect."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() and "cuda" in devices else "cpu",
                        choices=devices)
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (seconds), for smoke tests")
    parser.add_argument("--json", help="also write the rows (with the machine header) to this file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    rows = run(args.device, args.quick)
    if args.json:
        from bench.files import atomic_write_json
        from bench.provenance import machine
        atomic_write_json(args.json, {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "rows": rows})
    return 0 if all(r["correct"] for r in rows) else 1
