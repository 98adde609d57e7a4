"""Backend selection shared by every kernel."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


def pick_backend(name: str, backends: dict[str, Callable], device: torch.device, op: str) -> Callable:
    """Return the implementation called `name`; `auto` is the fastest correct one for `device`."""
    if name == "auto":
        # Own Triton/fla kernels only run on CUDA; on CPU a compiled forward where an operator has one (it runs the
        # chunked torch form itself when a gradient is to be recorded), else the chunked torch form; an operator
        # without a chunked form falls back to its plain torch form.
        for candidate in ("triton", "chunk", "torch") if device.type == "cuda" else ("native", "chunk", "torch"):
            if candidate in backends:
                return backends[candidate]
    if name not in backends:
        raise ValueError(f"{op}: unknown backend {name!r}; choose one of {sorted(backends) + ['auto']}")
    return backends[name]


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, op: str) -> tuple[int, int, int, int, int]:
    """Validate the (B, T, H, K/V) layout and return B, T, H, K, V."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{op}: expected q, k of shape (B, T, H, K) and v of shape (B, T, H, V), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, T, H, K = q.shape
    return B, T, H, K, v.shape[-1]


def autocast_off(device: torch.device):
    """A context with autocast off on `device`, so each form keeps its own precision (fp32 state); a no-op context
    when autocast is not on (entering `torch.autocast` costs microseconds a call, felt in one-token decode steps)."""
    return torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) else contextlib.nullcontext()
