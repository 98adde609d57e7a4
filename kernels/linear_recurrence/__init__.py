"""linear_recurrence: S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t."""
from __future__ import annotations

import importlib.util

from kernels._backend import autocast_off, check_qkv, pick_backend
from kernels.fla_backends import linear_recurrence_fla
from kernels.linear_recurrence.chunk import linear_recurrence_chunk
from kernels.linear_recurrence.matrix import linear_recurrence_matrix as linear_recurrence_matrix
from kernels.linear_recurrence.naive import linear_recurrence_naive
from kernels.linear_recurrence.native import linear_recurrence_native
from kernels.linear_recurrence.ssd_terms import scaled_keys, with_skip
from kernels.linear_recurrence.step import linear_recurrence_step

BACKENDS = {"naive": linear_recurrence_naive, "step": linear_recurrence_step, "chunk": linear_recurrence_chunk,
            "native": linear_recurrence_native, "fla": linear_recurrence_fla}


def _triton(*args, **kwargs):
    from kernels.linear_recurrence.triton import linear_recurrence_triton  # first use: triton is optional
    return linear_recurrence_triton(*args, **kwargs)


if importlib.util.find_spec("triton") is not None:
    BACKENDS["triton"] = _triton


def linear_recurrence(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                      output_final_state=False, backend="auto", key_scale=None, skip=None):
    """Gated linear recurrence shared by seven students.

    q, k: (B, T, H, K); v: (B, T, H, V); log_decay: None, (B, T, H) per head or (B, T, H, K) per key
    channel (≤ 0); bonus: (H, K) gives the RWKV-6 form o_t = q_tᵀ(S_{t−1} + diag(bonus) k_t v_tᵀ);
    scale defaults to K**-0.5; initial_state: (B, H, K, V). Mamba-2's terms (Dao & Gu 2024, §7): key_scale
    (B, T, H) writes key_scale_t k_t in k_t's place (Δ_t B_t), skip (H,) adds skip ⊙ v_t to o_t in fp32 (D x_t).
    Returns (o (B, T, H, V), final state or None).
    """
    B, T, H, K, V = check_qkv(q, k, v, "linear_recurrence")
    if log_decay is not None and log_decay.shape not in ((B, T, H), (B, T, H, K)):
        raise ValueError(f"linear_recurrence: log_decay must be (B, T, H) or (B, T, H, K) = "
                         f"{(B, T, H)} or {(B, T, H, K)}, got {tuple(log_decay.shape)}")
    if bonus is not None and bonus.shape != (H, K):
        raise ValueError(f"linear_recurrence: bonus must be (H, K) = {(H, K)}, got {tuple(bonus.shape)}")
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(f"linear_recurrence: initial_state must be (B, H, K, V) = {(B, H, K, V)}, "
                         f"got {tuple(initial_state.shape)}")
    if key_scale is not None and key_scale.shape != (B, T, H):
        raise ValueError(f"linear_recurrence: key_scale must be (B, T, H) = {(B, T, H)}, got {tuple(key_scale.shape)}")
    if skip is not None and skip.shape != (H,):
        raise ValueError(f"linear_recurrence: skip must be (H,) = {(H,)}, got {tuple(skip.shape)}")
    fn = pick_backend(backend, BACKENDS, q.device, "linear_recurrence")
    with autocast_off(q.device):
        if fn in (linear_recurrence_native, linear_recurrence_step):  # their compiled passes take both terms
            return fn(q, k, v, log_decay=log_decay, bonus=bonus, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, key_scale=key_scale, skip=skip)
        o, final = fn(q, scaled_keys(k, key_scale), v, log_decay=log_decay, bonus=bonus, scale=scale,
                      initial_state=initial_state, output_final_state=output_final_state)
        return with_skip(o, v, skip), final

