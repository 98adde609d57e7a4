"""kernels/native built from a commit's sources (or the working tree's), a patch applied where given, under its own
extension name: the two sides of the compiled-pass A/B probes here (`scan_variant_ab.py`, `scan_forms_ab.py`)."""
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

import kernels.native as native

ROOT = Path(__file__).resolve().parents[2]


def build_native(name: str, base: str | None, patch: Path | None = None, cflags=()):
    """The extension from `base`'s sources (None: the working tree), with `patch` applied unless None or "-"."""
    isa = torch.backends.cpu.get_cpu_capability().lower()
    folder = Path(tempfile.mkdtemp())
    (folder / "kernels" / "native").mkdir(parents=True)
    for source in native.SOURCES:
        relative = source.relative_to(ROOT)
        if base:
            (folder / relative).write_text(subprocess.run(["git", "show", f"{base}:{relative}"], check=True,
                                                          capture_output=True, text=True, cwd=ROOT).stdout)
        else:
            shutil.copy(source, folder / relative)
    if patch is not None and str(patch) != "-":
        subprocess.run(["patch", "-p1", "-d", str(folder), "-i", str(patch.resolve())], check=True, capture_output=True)
    return load(f"{name}_{isa}", [str(folder / "kernels" / "native" / s.name) for s in native.SOURCES],
                extra_cflags=["-O3", "-fopenmp", *native.ISA_FLAGS.get(isa, []), *cflags], extra_ldflags=["-fopenmp"])
