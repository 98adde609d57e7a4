"""Gated DeltaNet — Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks", eq. 10 and §3.4.

S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / √d, with L2-normalised q and k
after a short convolution + SiLU, β_t = σ(W_β x_t), α_t = exp(−exp(A_log) · softplus(W_α x_t + b))
(Mamba-2 style); gated RMSNorm with silu(W_g x), output projection.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import (
    HeadRMSNorm,
    ShortConv,
    merge_heads,
    short_conv_normalized,
    split_heads,
    stacked_linear,
    stacked_weight,
)


class GatedDeltaNetMixer(RecurrentMixer):
    name = "gated_deltanet"
    IDENTITY_CONVS = ('q_conv', 'k_conv', 'v_conv')  # start as pass-through so copied projections act as in the teacher
    uses_delta_rule = True

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        self.add_attention_projections()  # q, k, v, o as the teacher's
        self.q_conv = ShortConv(H * K, config.conv_size, bias=False)
        self.k_conv = ShortConv(H * K, config.conv_size, bias=False)
        self.v_conv = ShortConv(H * K, config.conv_size, bias=False)
        self.beta_proj = nn.Linear(D, H, bias=False)
        self.decay_proj = nn.Linear(D, H, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1))).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.g_proj = nn.Linear(D, H * K, bias=False)
        self.norm = HeadRMSNorm(K, config.norm_eps)

    def featurize(self, x, state):
        H, HK = self.num_heads, self.num_heads * self.head_dim
        # every projection of x as one product; q, k and v as one convolution over their stacked channels with one
        # cache (a decoded token's time is mostly per-op overhead)
        projected = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.beta_proj,
                                       self.decay_proj])
        qkv_in, g, beta_in, decay_in = projected.split([3 * HK, HK, H, H], dim=-1)
        conv_weight = stacked_weight([self.q_conv, self.k_conv, self.v_conv])[:, 0]
        # q's heads, then k's, L2-normalised: one call
        qk, v, conv_cache = short_conv_normalized(qkv_in, conv_weight, None, self.q_conv.activation == "silu",
                                                  state.get("qkv_conv"), 2 * HK, self.head_dim)
        q, k = qk[..., :H, :], qk[..., H:, :]
        beta = torch.sigmoid(beta_in.float())
        log_decay = -self.A_log.float().exp() * F.softplus(decay_in.float() + self.dt_bias)
        return Features(q=q, k=k, v=split_heads(v, H), beta=beta,
                        log_decay=log_decay, context={"g": split_heads(g, H)},
                        window_q=split_heads(qkv_in[..., :HK], H), window_k=split_heads(qkv_in[..., HK:2 * HK], H),
                        carry={"qkv_conv": conv_cache})

    def readout(self, core, f, x):
        return self.o_proj(merge_heads(self.norm(core, f.context["g"])).to(x.dtype))
