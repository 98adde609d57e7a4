"""The C heap during timing (Linux, glibc). By default glibc returns large freed blocks to the kernel: blocks over a
threshold are mapped and unmapped one by one, and that threshold moves with the largest block freed so far; the
heap's top is trimmed past a second one. A forward's next intermediates then fault their pages in again, zeroed by
the kernel, at a cost that depends on what the process freed before and on the host, not on the model
(`results/speed/heap_ab.txt`). `steady` fixes both thresholds with mallopt(3), so freed blocks stay in the process and
are reused, as jemalloc or tcmalloc keep them; blocks over 32 MiB (glibc's largest threshold) are still mapped."""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

MALLOPT_PARAMETERS = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}  # malloc.h
STEADY = {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": 2**31 - 1, "M_TOP_PAD": 256 << 20}
HEAPS = ("default", "steady")
_set: dict[str, int] = {}  # what this process set, for the reports


def applied() -> dict[str, int]:
    """The mallopt settings this process made (empty: glibc's defaults)."""
    return dict(_set)


def set_heap(values: dict[str, int]) -> dict[str, int]:
    """mallopt(parameter, value) for each; returns what was set. RuntimeError where this is not glibc or glibc
    refuses a value (each call is checked, so a refused one is never recorded as set)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        raise RuntimeError(f"setting the C heap needs glibc's mallopt (this is {platform.system()} "
                           f"{platform.libc_ver()[0] or 'without glibc'}); run with --heap default")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for name, value in values.items():
        if libc.mallopt(MALLOPT_PARAMETERS[name], value) != 1:
            raise RuntimeError(f"glibc refused mallopt({name}, {value})")
        _set[name] = value
    return dict(values)
