"""What the compiled-pass A/B probes beside this file share: the extension built from another revision's sources
(loaded beside today's in one process, switched per call), and a prefill loop that alternates the variants."""
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from kernels import native

ROOT = Path(__file__).resolve().parents[2]


def build_at(revision: str):
    """The extension compiled from `revision`'s kernels/native sources, under its own name (torch caches by name)."""
    folder = Path(tempfile.mkdtemp(prefix=f"native_{revision}_"))
    paths = []
    for source in native.SOURCES:
        text = subprocess.run(["git", "show", f"{revision}:kernels/native/{source.name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (folder / source.name).write_text(text)
        paths.append(str(folder / source.name))
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return load(f"distill_bench_probe_{revision}_{isa}", paths, extra_cflags=["-O3", "-fopenmp",
                *native.ISA_FLAGS.get(isa, [])], extra_ldflags=["-fopenmp"], build_directory=str(folder),
                verbose=False)


def modules(revision: str) -> dict:
    """{"old": the extension at `revision`, "new": the working tree's}."""
    new = native.module()
    assert new is not None, "the extension could not be built here"
    return {"old": build_at(revision), "new": new}


def use_module(module) -> None:
    """Every kernel call from here on runs `module` (the loaded extension is looked up per call)."""
    native._state["module"] = module


def time_alternating(calls: dict, variants: dict, use, rounds: int) -> dict:
    """{(call, variant): seconds per round}: round 0 warms up; within a round each call runs every variant back to
    back, the order reversed every other round; `use(variant)` switches before each call."""
    names = list(variants)
    times = {(call, variant): [] for call in calls for variant in names}
    for r in range(rounds + 1):
        for call, fn in calls.items():
            for variant in (names if r % 2 else names[::-1]):
                use(variants[variant])
                start = time.perf_counter()
                fn()
                if r:
                    times[call, variant].append(time.perf_counter() - start)
    return times


def summary(times: dict, call: str, old: str = "old", new: str = "new") -> str:
    a, b = times[call, old], times[call, new]
    ratios = sorted(x / y for x, y in zip(a, b))
    return (f"{call}: {old} {1e3 * statistics.median(a):.2f} ms, {new} {1e3 * statistics.median(b):.2f} ms, "
            f"{old}/{new} per round median {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]")
