"""flash-linear-attention's chunk kernels behind our contract: peers to time against, and to use at scale.

Optional (`pip install 'distill-bench[cuda]'`), CUDA only. Our layout (B, T, H, K) and log-space decays
are fla's; the mapping per form: no/per-head decay → `chunk_simple_gla`, per-channel → `chunk_gla`,
RWKV-6 bonus → `chunk_rwkv6`, delta rule → `chunk_gated_delta_rule`.
"""
from __future__ import annotations

import importlib

import torch


def _fla_op(module: str, name: str, device: torch.device):
    if device.type != "cuda":
        raise RuntimeError("backend 'fla' runs on CUDA only; use backend='chunk' on CPU")
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}"), name)
    except ImportError as error:
        raise RuntimeError("backend 'fla' needs flash-linear-attention: pip install 'distill-bench[cuda]'") from error


def linear_recurrence_fla(q, k, v, log_decay=None, bonus=None, scale=None, initial_state=None,
                          output_final_state=False):
    common = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    if bonus is not None:
        w = log_decay if log_decay is not None else q.new_zeros(q.shape)
        w = w[..., None].expand(q.shape) if w.dim() == 3 else w
        return _fla_op("rwkv6", "chunk_rwkv6", q.device)(q, k, v, w, bonus, **common)
    if log_decay is None or log_decay.dim() == 3:
        return _fla_op("simple_gla", "chunk_simple_gla", q.device)(q, k, v, g=log_decay, **common)
    return _fla_op("gla", "chunk_gla", q.device)(q, k, v, log_decay, **common)


def delta_rule_fla(q, k, v, beta, log_decay=None, scale=None, initial_state=None, output_final_state=False):
    g = log_decay if log_decay is not None else q.new_zeros(q.shape[:3], dtype=torch.float32)
    return _fla_op("gated_delta_rule", "chunk_gated_delta_rule", q.device)(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
