"""Mamba-2 (SSD) mixer — Dao & Gu 2024, "Transformers are SSMs", §7 (the SSD layer) and Listing 1.

h_t = a_t h_{t−1} + Δ_t B_t x_tᵀ,  a_t = exp(−Δ_t · exp(A_log)),  y_t = C_tᵀ h_t + D ⊙ x_t,
then gated RMSNorm with silu(z) and the output projection. In attention terms C↔Q, B↔K, x↔V.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadRMSNorm, ShortConv, merge_heads, split_heads, stacked_linear


class Mamba2Mixer(RecurrentMixer):
    name = "mamba"
    # qkv_copy: C <- W_Q, B <- W_K, x <- W_V, out <- W_O
    QKV_COPY = {"C_proj": "q_proj", "B_proj": "k_proj", "x_proj": "v_proj", "out_proj": "o_proj"}
    IDENTITY_CONVS = ('conv',)  # start as pass-through so copied projections act as in the teacher

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, P = config.hidden_size, config.num_heads, config.head_dim
        self.add_attention_projections()  # C (query), B (key), x (value), out
        self.z_proj = nn.Linear(D, H * P, bias=False)  # output gate
        self.dt_proj = nn.Linear(D, H, bias=False)
        self.conv = ShortConv(3 * H * P, config.conv_size)
        # Mamba-2 inits: A ~ U[1, 16], Δ ~ logU[1e-3, 1e-1] through softplus, D = 1.
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.D = nn.Parameter(torch.ones(H))
        self.norm = HeadRMSNorm(P, config.norm_eps)

    def featurize(self, x, state):
        H = self.num_heads
        xBC_in = stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj])  # the conv's layout: x, B, C
        _, B_in, C_in = xBC_in.chunk(3, dim=-1)
        xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
        xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
        dt = F.softplus(self.dt_proj(x).float() + self.dt_bias)  # (B, T, H)
        log_decay = -dt * self.A_log.float().exp()
        # Δ·B and D·x are the kernel's key scale and skip: the compiled scan applies them in its pass
        return Features(q=Cs, k=Bs, v=xs, log_decay=log_decay, key_scale=dt, skip=self.D, scale=1.0,
                        context={"z": split_heads(self.z_proj(x), H)}, carry={"conv": conv_cache},
                        window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))

    def readout(self, core, f, x):
        return self.out_proj(merge_heads(self.norm(core, f.context["z"])).to(x.dtype))
