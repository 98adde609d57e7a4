"""Gated linear attention — Yang et al. 2024, GLA, eq. 3-4 and §4.4.

S_t = diag(α_t) S_{t−1} + k_t v_tᵀ,  α_t = σ(W_α² W_α¹ x_t + b)^(1/τ) (low-rank, τ = 16),
o_t = S_tᵀ q_t / √d; per-head RMSNorm, swish output gate, output projection.
"""
from __future__ import annotations

import torch.nn as nn

from kernels.decay_gate import decay_gate
from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadRMSNorm, merge_heads, split_heads

GATE_RANK = 16
GATE_TEMPERATURE = 16.0


class GLAMixer(RecurrentMixer):
    name = "gla"

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        self.add_attention_projections()  # q, k, v, o as the teacher's
        self.g_proj = nn.Linear(D, H * K, bias=False)
        self.gk_down = nn.Linear(D, GATE_RANK, bias=False)
        self.gk_up = nn.Linear(GATE_RANK, H * K, bias=True)
        self.norm = HeadRMSNorm(K, config.norm_eps)

    def featurize(self, x, state):
        H = self.num_heads
        q, k, v = (split_heads(p(x), H) for p in (self.q_proj, self.k_proj, self.v_proj))
        log_decay = decay_gate(split_heads(self.gk_up(self.gk_down(x)), H), GATE_TEMPERATURE)
        return Features(q=q, k=k, v=v, log_decay=log_decay, context={"g": split_heads(self.g_proj(x), H)})

    def readout(self, core, f, x):
        return self.o_proj(merge_heads(self.norm(core, f.context["g"])).to(x.dtype))
