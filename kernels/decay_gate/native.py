"""The decay gate over a prompt or a decoded token on CPU as one compiled pass (`kernels/native/sequence_forward.cpp`):
log σ, the temperature and 1 − α while each value is in a register, where torch takes a pass (and fresh memory) for
each. No backward: where a gradient is to be recorded, off CPU, or where the extension cannot be built, the torch
form (an elementwise fp32 map either way, so autocast changes nothing here)."""
from __future__ import annotations

from kernels import native
from kernels.decay_gate.torch_form import decay_gate_torch


def decay_gate_native(x, temperature=1.0, complement=False):
    compiled = native.without_autograd(x)
    if compiled is None:
        return decay_gate_torch(x, temperature, complement)
    out = compiled.decay_gate(x, temperature, complement)
    return (out[0], out[1]) if complement else out[0]
