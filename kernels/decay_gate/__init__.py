"""decay_gate: a sigmoid decay gate in log space (GLA, Yang et al. 2024, eq. 4: α_t = σ(x_t)^(1/τ), τ = 16; MetaLA,
Chou et al. 2024, §4, whose key is 1 − α_t).

log α = log σ(x) / τ (≤ 0) in fp32 whatever x's dtype; with `complement`, also 1 − α = −expm1(log α), exact near 0
where 1 − exp would cancel.
"""
from __future__ import annotations

from kernels._backend import pick_backend
from kernels.decay_gate.native import decay_gate_native
from kernels.decay_gate.torch_form import decay_gate_torch

BACKENDS = {"torch": decay_gate_torch, "native": decay_gate_native}


def decay_gate(x, temperature=1.0, *, complement=False, backend="auto"):
    """x any shape; temperature τ > 0. Returns log α (fp32, x's shape), or (log α, 1 − α) with `complement`."""
    if not temperature > 0:
        raise ValueError(f"decay_gate: temperature must be > 0, got {temperature!r}")
    if not x.is_floating_point():
        raise ValueError(f"decay_gate: x must be a floating tensor, got {x.dtype}")
    fn = pick_backend(backend, BACKENDS, x.device, "decay_gate")
    return fn(x, float(temperature), complement)
