"""Paired A/B across processes: glibc's default malloc against one that keeps freed memory in the heap.

    python results/speed/malloc_keep_ab.py [--pairs 3] [--students all] [--jsonl results/speed/malloc_keep_ab.jsonl]

glibc hands every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB as such blocks are freed)
to a fresh mmap and returns it on free, so each large tensor of a forward or backward pays its page faults and
zeroing again. "keep" sets `mallopt(M_MMAP_MAX, 0)` and a 1 GiB trim threshold at the start of the process:
large blocks come from the heap and stay there once freed. mallopt cannot restore the default's dynamic threshold
within a process, so the two run as separate child processes, alternating (default first in even pairs), each
timing the same calls: one end_to_end optimiser step (batch 8 × 512, fp32, `bench.perf.distill_speed.step_fn`)
per student, and prefill of 2,048 and 16,384 tokens for the floor, the teacher and the students (batch 1,
inference). Each child also reports its peak resident memory. Ratios are per pair (default ÷ keep); the
summary prints their medians.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def keep_freed_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)):
        raise SystemExit("error: mallopt refused the settings")


def child(mode: str, students: list[str], repeats: int) -> dict:
    if mode == "keep":
        keep_freed_memory()
    import torch

    from bench.perf.distill_speed import step_fn
    from bench.perf.throughput import build_floor, embedded_shape_teacher
    from students.surgery import build_student

    torch.set_num_threads(2)
    teacher = embedded_shape_teacher().eval()
    built = {name: build_student(teacher, name, init="random", seed=0) for name in students}
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, teacher.config.vocab_size, (8, 512), generator=gen)
    out = {"mode": mode, "train_s": {}, "prefill_s": {}}
    for name, student in built.items():
        step = step_fn("end_to_end", student, teacher, batch, False)
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        out["train_s"][name] = statistics.median(times)
    models = {"floor": build_floor(teacher).eval(), "teacher": teacher,
              **{name: student.eval() for name, student in built.items()}}
    with torch.inference_mode():
        for length in (2048, 16384):
            ids = torch.randint(0, teacher.config.vocab_size, (1, length), generator=gen)
            for name, model in models.items():
                model(ids)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(ids)
                    times.append(time.perf_counter() - start)
                out["prefill_s"][f"{name}@{length}"] = statistics.median(times)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def summarise(lines: list[dict]) -> None:
    pairs = {}
    for line in lines:
        pairs.setdefault(line["pair"], {})[line["mode"]] = line
    pairs = [p for p in pairs.values() if len(p) == 2]
    if not pairs:
        return
    print(f"{len(pairs)} pairs; default ÷ keep per pair (median), then the per-pair ratios")
    for section in ("train_s", "prefill_s"):
        for key in pairs[0]["default"][section]:
            ratios = [p["default"][section][key] / p["keep"][section][key] for p in pairs]
            default = statistics.median(p["default"][section][key] for p in pairs)
            keep = statistics.median(p["keep"][section][key] for p in pairs)
            print(f"{section[:-2]:8} {key:24} default {default * 1e3:8.1f} ms  keep {keep * 1e3:8.1f} ms  "
                  f"{statistics.median(ratios):.2f}  ({' '.join(f'{r:.2f}' for r in ratios)})")
    for mode in ("default", "keep"):
        peaks = " ".join(f"{p[mode]['peak_rss_mib']:.0f}" for p in pairs)
        print(f"peak RSS {mode}: {peaks} MiB")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--students", default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jsonl", type=Path, default=ROOT / "results" / "speed" / "malloc_keep_ab.jsonl")
    parser.add_argument("--summary", action="store_true", help="only print the summary of --jsonl")
    parser.add_argument("--child", choices=("default", "keep"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.students.split(","), args.repeats)))
        return 0
    if not args.summary:
        from bench.provenance import machine
        from students.registry import STUDENTS

        students = list(STUDENTS) if args.students == "all" else args.students.split(",")
        info, run_id = machine(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for pair in range(args.pairs):
            for mode in ("default", "keep") if pair % 2 == 0 else ("keep", "default"):
                result = subprocess.run([sys.executable, __file__, "--child", mode, "--students", ",".join(students),
                                         "--repeats", str(args.repeats)], capture_output=True, text=True, cwd=ROOT,
                                        check=True)
                line = {**json.loads(result.stdout.strip().splitlines()[-1]), "pair": f"{run_id}/{pair}",
                        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": info}
                with args.jsonl.open("a") as handle:
                    handle.write(json.dumps(line) + "\n")
                print(f"pair {pair} {mode} done", flush=True)
    summarise([json.loads(line) for line in args.jsonl.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
