"""The C heap during timing (Linux, glibc). By default glibc returns large freed blocks to the kernel: blocks over a
threshold are mapped and unmapped one by one, and that threshold moves with the largest block freed so far; the
heap's top is trimmed past a second one. A forward's next intermediates then fault their pages in again, zeroed by
the kernel, at a cost that depends on what the process freed before and on the host, not on the model
(`results/speed/heap_ab.txt`). `steady` fixes both thresholds with mallopt(3), so freed blocks stay in the process and
are reused, as jemalloc or tcmalloc keep them: blocks up to 1 GiB come from the heap (a 16,384-token prefill's
logits are 268 MB), or up to 32 MiB where a glibc refuses more (`set_steady`).
Memory read from the resident size needs the kept blocks released first (`release_free`), or reused pages hide a
model's allocations."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

MALLOPT_PARAMETERS = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}  # malloc.h
STEADY = {"M_MMAP_THRESHOLD": 1 << 30, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 << 20}
CLASSIC_MMAP_THRESHOLD_MAX = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, the most older glibc accepts
HEAPS = ("auto", "steady", "default")  # auto: steady where glibc runs, else the heap as it comes


def glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def resolve(heap: str) -> str:
    """The heap a run uses for `heap` (one of HEAPS)."""
    if heap not in HEAPS:
        raise ValueError(f"heap must be one of {', '.join(HEAPS)}, got {heap!r}")
    return ("steady" if glibc() else "default") if heap == "auto" else heap


_set: dict[str, int] = {}  # what this process set, for the reports


class Refused(RuntimeError):
    """glibc's mallopt returned failure for one setting (`name`)."""

    def __init__(self, name: str, value: int):
        super().__init__(f"glibc refused mallopt({name}, {value})")
        self.name = name


def applied() -> dict[str, int]:
    """The mallopt settings this process made (empty: glibc's defaults)."""
    return dict(_set)


@functools.cache
def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return libc


def release_free() -> None:
    """Give the heap's free pages back to the kernel (malloc_trim(0)) where this process kept them (`set_heap`), so
    that a block's resident high-water mark counts its own allocations again."""
    if _set:
        _libc().malloc_trim(0)


def set_heap(values: dict[str, int]) -> dict[str, int]:
    """mallopt(parameter, value) for each; returns what was set. RuntimeError where this is not glibc, `Refused`
    where glibc refuses a value (each call is checked, so a refused one is never recorded as set)."""
    if not glibc():
        raise RuntimeError(f"setting the C heap needs glibc's mallopt (this is {platform.system()} "
                           f"{platform.libc_ver()[0] or 'without glibc'}); run with --heap default")
    libc = _libc()
    for name, value in values.items():
        if libc.mallopt(MALLOPT_PARAMETERS[name], value) != 1:
            raise Refused(name, value)
        _set[name] = value
    return dict(values)


def set_steady() -> dict[str, int]:
    """STEADY, with the mapping threshold at 32 MiB where this glibc refuses 1 GiB; returns what was set."""
    try:
        return set_heap(STEADY)
    except Refused as refused:
        if refused.name != "M_MMAP_THRESHOLD":
            raise
        return set_heap({**STEADY, "M_MMAP_THRESHOLD": CLASSIC_MMAP_THRESHOLD_MAX})


def use(heap: str) -> tuple[str, dict[str, int]]:
    """Set the heap `heap` (one of HEAPS) asks for; returns the heap this process's calls now run on and its mallopt
    settings. A steady heap, once set, stays for the process, so `default` after it still reports `steady`."""
    if resolve(heap) == "steady":
        set_steady()
    return ("steady" if _set else "default"), applied()
