"""ddlerp: RWKV-6's data-dependent token shift and decay (Peng et al. 2024, "Eagle and Finch", eq. 12-16).

xx_t = x_{t−1} − x_t; mix_t = tanh((x_t + xx_t ⊙ μ_x) A); for s in w, k, v, r, g:
stream_s = x_t + xx_t ⊙ (μ_s + mix_{t,s} B_s); log_decay_t = −exp(d + tanh(stream_w Wd1) Wd2).
"""
from __future__ import annotations

from kernels._backend import pick_backend
from kernels.ddlerp.inductor import ddlerp_inductor
from kernels.ddlerp.native import ddlerp_native
from kernels.ddlerp.torch_form import ddlerp_torch

BACKENDS = {"torch": ddlerp_torch, "native": ddlerp_native, "inductor": ddlerp_inductor}


def ddlerp(x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2, backend="auto"):
    """x (B, T, D); previous (B, 1, D), the token before x, or None (zeros); maa_x (D,); maa_w1 (D, 5R);
    maa (5, D) for w, k, v, r, g; maa_w2 (5, R, D); time_decay (E,); decay_w1 (D, Rd); decay_w2 (Rd, E), E the
    decay's width (heads × key dim). Returns the streams k, v, r, g as one (4, B, T, D) tensor and log_decay
    (B, T, E) (≤ 0)."""
    if x.dim() != 3:
        raise ValueError(f"ddlerp: x must be (B, T, D), got {tuple(x.shape)}")
    B, T, D = x.shape
    rank, decay_rank, width = maa_w1.shape[-1] // 5, decay_w1.shape[-1], time_decay.shape[-1]
    expected = {"previous": (B, 1, D), "maa_x": (D,), "maa_w1": (D, 5 * rank), "maa": (5, D), "maa_w2": (5, rank, D),
                "time_decay": (width,), "decay_w1": (D, decay_rank), "decay_w2": (decay_rank, width)}
    given = {"previous": previous, "maa_x": maa_x, "maa_w1": maa_w1, "maa": maa, "maa_w2": maa_w2,
             "time_decay": time_decay, "decay_w1": decay_w1, "decay_w2": decay_w2}
    for name, tensor in given.items():
        if tensor is not None and tuple(tensor.shape) != expected[name]:
            raise ValueError(f"ddlerp: {name} must be {expected[name]} for x {tuple(x.shape)}, "
                             f"got {tuple(tensor.shape)}")
    fn = pick_backend(backend, BACKENDS, x.device, "ddlerp")
    return fn(x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2)
