"""Prefill A/B in one process (fp32, batch 1, no gradient, use_cache=False, as bench.throughput), alternating:

  blocks   each student with its mixers run PREFILL_BLOCK tokens at a time (students.base) against one pass
           (or against --versus tokens at a time), at the embedded teacher's shape or --teacher-shape's;
  gemm     rwkv and gated_deltanet with the C++ extension built from a commit's sources (the old products) against
           the working tree's.

The floor (bench.perf.throughput.FloorMixer) runs before every call, and the sides swap order every round;
times are medians over rounds.
    python results/speed/prefill_blocks_ab.py blocks --students all --lengths 4096,16384 --repeats 7
    python results/speed/prefill_blocks_ab.py gemm --old 8ef5deb --lengths 2048,16384
    python results/speed/prefill_blocks_ab.py blocks --teacher-shape smollm2-135m --versus 512 --lengths 2048
"""
import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import kernels.native as native
import students
import students.base
from bench.perf.throughput import TEACHER_SHAPES, build_floor, shaped_teacher
from bench.provenance import machine
from students.surgery import build_student

ONE_PASS = 1 << 30


def old_extension(commit: str):
    from torch.utils.cpp_extension import load
    folder = Path(tempfile.mkdtemp())
    for source in native.SOURCES:
        relative = source.relative_to(Path(__file__).resolve().parents[2])
        (folder / source.name).write_text(subprocess.run(["git", "show", f"{commit}:{relative}"], check=True,
                                                         capture_output=True, text=True).stdout)
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return load(f"ab_{commit}_{isa}", [str(folder / s.name) for s in native.SOURCES],
                extra_cflags=["-O3", "-fopenmp", *native.ISA_FLAGS.get(isa, [])], extra_ldflags=["-fopenmp"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["blocks", "gemm"])
    parser.add_argument("--students", default="rwkv,gated_deltanet")
    parser.add_argument("--lengths", default="2048,16384")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--old", default="8ef5deb", help="gemm: the commit whose extension is the old side")
    parser.add_argument("--teacher-shape", choices=sorted(TEACHER_SHAPES), default="embedded")
    parser.add_argument("--versus", type=int, default=ONE_PASS, help="blocks: the other side's block (tokens)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    names = students.available()[:-1] if args.students == "all" else args.students.split(",")
    teacher = shaped_teacher(args.teacher_shape)
    floor = build_floor(teacher)
    models = {name: build_student(teacher, name, init="random", seed=0).eval() for name in names}
    new = native.module()
    other = "one pass" if args.versus == ONE_PASS else f"blocks of {args.versus}"
    sides = {"blocks": {other: args.versus, f"blocks of {students.base.PREFILL_BLOCK}": students.base.PREFILL_BLOCK},
             "gemm": {"old": old_extension(args.old) if args.what == "gemm" else None, "new": new}}[args.what]

    def run(model, ids, side):
        if args.what == "blocks":
            students.base.PREFILL_BLOCK = sides[side]
        else:
            native._state["module"] = sides[side]
        model(ids, use_cache=False)

    info = machine()
    print(f"# {args.what}: {info.get('device_name')} {info.get('cpu_capability')}, torch {torch.__version__}, "
          f"commit {info.get('commit')}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, repeats {args.repeats}, "
          f"teacher shape {args.teacher_shape}")
    for length in map(int, args.lengths.split(",")):
        ids = torch.randint(0, teacher.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
        calls = {"floor": lambda: floor(ids, use_cache=False)}
        for name, model in models.items():
            for side in sides:
                calls[f"{name} {side}"] = lambda model=model, side=side: run(model, ids, side)
        times = {key: [] for key in calls}
        with torch.no_grad():
            for call in calls.values():
                call()
            for round_ in range(args.repeats):
                # the floor before every call, and the two sides' order swapped every round: a call's time depends
                # on what ran before it (the heap it inherits), so neither side always follows the other
                for name in models:
                    for side in (list(sides) if round_ % 2 == 0 else list(sides)[::-1]):
                        for key in ("floor", f"{name} {side}"):
                            start = time.perf_counter()
                            calls[key]()
                            times[key].append(time.perf_counter() - start)
        floor_s = statistics.median(times["floor"])
        print(f"T={length}: floor {1e3 * floor_s:.1f} ms")
        for name in models:
            cells = [f"{side} {1e3 * statistics.median(times[f'{name} {side}']):.1f} ms "
                     f"({statistics.median(times[f'{name} {side}']) / floor_s:.3f}x floor)" for side in sides]
            first, second = (statistics.median(times[f"{name} {side}"]) for side in sides)
            print(f"  {name:16s} " + "  ".join(cells) + f"  {first / second:.3f}x")


if __name__ == "__main__":
    main()
