"""causal_attention: softmax attention with a causal mask, for a frozen teacher's forward while a student trains.

o_t = Σ_{s≤t} softmax_s(q_t·k_s · scale) v_s (Vaswani et al. 2017, eq. 1, with the causal mask), query head h
reading key-value head ⌊h·G/H⌋ (grouped-query attention, Ainslie et al. 2023). Backends: `torch` (torch's sdpa, with
autograd), `naive` (the formula's products and softmax in fp32: the reference) and `native` (one compiled call on CPU
without autograd, `kernels/native`; elsewhere, or where a gradient is to be recorded, sdpa).
"""
from __future__ import annotations

import math

from kernels._backend import pick_backend
from kernels.causal_attention.native import causal_attention_native
from kernels.causal_attention.torch_form import causal_attention_naive, causal_attention_torch

BACKENDS = {"torch": causal_attention_torch, "naive": causal_attention_naive, "native": causal_attention_native}


def causal_attention(q, k, v, scale=None, backend="auto"):
    """q (B, H, T, K), k (B, G, T, K), v (B, G, T, V), G dividing H (sdpa's layout); scale 1/√K unless given.
    Returns (B, T, H, V) in q's dtype (the layout transformers' attention functions return)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"causal_attention: q, k, v must be 4-d (B, H, T, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, T, K = q.shape
    G = k.shape[1]
    if tuple(k.shape) != (B, G, T, K) or tuple(v.shape[:3]) != (B, G, T) or G == 0 or H % G:
        raise ValueError(f"causal_attention: expected q (B, H, T, K), k (B, G, T, K), v (B, G, T, V) with G dividing "
                         f"H, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    fn = pick_backend(backend, BACKENDS, q.device, "causal_attention")
    return fn(q, k, v, 1.0 / math.sqrt(K) if scale is None else float(scale))
