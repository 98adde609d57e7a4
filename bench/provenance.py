"""Where a number was measured: device, threads, versions, commit, teacher weights — stored beside every result."""
from __future__ import annotations

import hashlib
import importlib
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    if os.environ.get("DISTILL_BENCH_COMMIT"):  # a copy of the tree without .git (e.g. a GPU machine)
        return os.environ["DISTILL_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        # results/ is what runs write (the leaderboard after every run of a sweep), not what they read: a
        # sweep must not mark its own later runs dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` says (often only the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16_kernels() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): where `--dtype auto` picks bf16.

    Both kinds pay: bf16 products ran at ~3x fp32's rate on an AMX Xeon and 2.1x on an AVX512-BF16 EPYC without
    AMX (results/speed/distill_speed_cpu*.json). oneDNN also reports bf16 support on AVX-512 CPUs that have neither,
    converting in software: there bf16 products ran at a fifth of fp32's rate and a bf16 training step at a third
    of fp32's, so those count as no."""
    return _onednn_reports_bf16() and any(_cpu_feature(name) for name in ("avx512_bf16", "amx_tile"))


def _onednn_reports_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_feature(name: str) -> bool:
    """torch's own probe of an x86 feature (`torch.cpu._is_<name>_supported`), else the kernel's cpuinfo flags."""
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        return any(line.startswith("flags") and name in line.split()
                   for line in Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:
        return False


def machine() -> dict:
    """Device, threads, versions and commit. On CPU also the vector ISA torch dispatches to (AVX2, AVX512, …)
    and whether it multiplies bf16 in hardware: they set a CPU's speed and what `--dtype auto` resolves to, and a
    shared machine's model name alone does not tell them apart."""
    cuda = torch.cuda.is_available()
    cpu = {} if cuda else {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "cpu_bf16_kernels": cpu_has_bf16_kernels()}
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else cpu_model(),
        **cpu,
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
