"""head_norm: a mixer's read-out norm per head, its affine and its output gate (Mamba-2's RMSNormGated, GLA's and
Gated DeltaNet's fused norm-gate, RetNet's and RWKV-6's group norm, xLSTM's multi-head layer norm).

y = n(x) ⊙ w (+ b) ⊙ act(g) over each head's channels, n(x) = x / sqrt(mean x² + ε) ("rms") or
(x − mean x) / sqrt(var x + ε) ("layer"), act none, silu or sigmoid; fp32 whatever the inputs' dtype. With
`augment` = (q, k, v, w), MetaLA's self-augmentation (Chou et al. 2024, "MetaLA", §4: the read-out's augmented
term), x + σ(v ⊙ Σ_c q_c w_c k_c) per head is normalised in x's place.
"""
from __future__ import annotations

from kernels._backend import pick_backend
from kernels.head_norm.inductor import head_norm_inductor
from kernels.head_norm.native import head_norm_native
from kernels.head_norm.torch_form import ACTIVATIONS, head_norm_torch

BACKENDS = {"torch": head_norm_torch, "native": head_norm_native, "inductor": head_norm_inductor}
KINDS = ("rms", "layer")


def head_norm(x, weight=None, bias=None, gate=None, *, kind="rms", activation="silu", eps=1e-5, augment=None,
              backend="auto"):
    """x (..., H, D), normalised over its last dimension; weight, bias (D,) or None (rms takes no bias); gate x's
    shape or None; activation the gate's (none, silu, sigmoid); augment (q, k, v of x's shape, w (H, D)) or None.
    Returns fp32 of x's shape."""
    if kind not in KINDS:
        raise ValueError(f"head_norm: kind must be one of {KINDS}, got {kind!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"head_norm: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if kind == "rms" and bias is not None:
        raise ValueError("head_norm: an rms norm takes no bias; pass bias=None or kind='layer'")
    D = x.shape[-1]
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != (D,):
            raise ValueError(f"head_norm: {name} must be ({D},) for x {tuple(x.shape)}, got {tuple(tensor.shape)}")
    if gate is not None and gate.shape != x.shape:
        raise ValueError(f"head_norm: gate must have x's shape {tuple(x.shape)}, got {tuple(gate.shape)}")
    if augment is not None:
        if len(augment) != 4:
            raise ValueError("head_norm: augment must be (q, k, v, w)")
        q, k, v, w = augment
        if any(t.shape != x.shape for t in (q, k, v)) or tuple(w.shape) != tuple(x.shape[-2:]):
            raise ValueError(f"head_norm: augment's q, k, v must have x's shape {tuple(x.shape)} and w "
                             f"{tuple(x.shape[-2:])}, got {[tuple(t.shape) for t in augment]}")
    fn = pick_backend(backend, BACKENDS, x.device, "head_norm")
    return fn(x, weight, bias, gate, kind, activation, eps, augment)
