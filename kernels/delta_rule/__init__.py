"""delta_rule: S_t = exp(log_decay_t)(I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

The gated delta rule of Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, arXiv 2412.06464, eq. 10); the fast forms
use the chunkwise WY form of Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule"
(arXiv 2406.06484, §3).
"""
from __future__ import annotations

import importlib.util

import torch

from kernels._backend import autocast_off, check_qkv, pick_backend
from kernels.delta_rule.chunk import delta_rule_chunk
from kernels.delta_rule.matrix import delta_rule_matrix as delta_rule_matrix
from kernels.delta_rule.naive import delta_rule_naive
from kernels.delta_rule.native import delta_rule_native
from kernels.delta_rule.step import delta_rule_step
from kernels.fla_backends import delta_rule_fla

BACKENDS = {"naive": delta_rule_naive, "step": delta_rule_step, "chunk": delta_rule_chunk,
            "native": delta_rule_native, "fla": delta_rule_fla}


def _triton(*args, **kwargs):
    from kernels.delta_rule.triton import delta_rule_triton  # first use: triton is optional
    return delta_rule_triton(*args, **kwargs)


if importlib.util.find_spec("triton") is not None:
    BACKENDS["triton"] = _triton


# 16-bit inputs are not yet proven on the Triton kernel: on an H100 (triton 3.6) its bf16 test stopped on an
# illegal memory access (docs/gpus.md), so `auto` runs the chunked torch form for them there.
TRITON_UNPROVEN_DTYPES = (torch.bfloat16, torch.float16)


def auto_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The name of the backend that `backend="auto"` runs for inputs of `dtype` on `device`."""
    chosen = pick_backend("auto", BACKENDS, device, "delta_rule")
    name = next(n for n, fn in BACKENDS.items() if fn is chosen)
    return "chunk" if name == "triton" and dtype in TRITON_UNPROVEN_DTYPES else name


def delta_rule(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False,
               backend="auto"):
    """Gated delta rule (the `gated_deltanet` student's memory update).

    q, k: (B, T, H, K) (k is expected L2-normalised); v: (B, T, H, V); beta: (B, T, H) in (0, 1);
    log_decay: None or (B, T, H) (≤ 0); initial_state: (B, H, K, V). Returns (o, final state or None).
    """
    B, T, H, K, V = check_qkv(q, k, v, "delta_rule")
    if beta.shape != (B, T, H):
        raise ValueError(f"delta_rule: beta must be (B, T, H) = {(B, T, H)}, got {tuple(beta.shape)}")
    if log_decay is not None and log_decay.shape != (B, T, H):
        raise ValueError(f"delta_rule: log_decay must be (B, T, H) = {(B, T, H)}, got {tuple(log_decay.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"delta_rule: initial_state must be (B, H, K, V) = {(B, H, K, V)}, "
                         f"got {tuple(initial_state.shape)}")
    name = auto_backend(q.device, q.dtype) if backend == "auto" else backend
    fn = pick_backend(name, BACKENDS, q.device, "delta_rule")
    with autocast_off(q.device):
        return fn(q, k, v, beta, log_decay=log_decay, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state)

