"""RWKV-6 ("Finch") time mixing — Peng et al. 2024, "Eagle and Finch", eq. 12-19.

Token shift with data-dependent interpolation (ddlerp), data-dependent per-channel decay
w_t = exp(−exp(d + tanh(x_w A) B)), S_t = diag(w_t) S_{t−1} + k_t v_tᵀ,
o_t = r_tᵀ (S_{t−1} + diag(u) k_t v_tᵀ); per-head GroupNorm, silu gate g, output projection.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kernels.ddlerp import ddlerp
from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadLayerNorm, batched_linear, merge_heads, split_heads

MIX_RANK = 32
DECAY_RANK = 64


class RWKV6Mixer(RecurrentMixer):
    name = "rwkv"
    # qkv_copy: receptance r <- W_Q
    QKV_COPY = {"r_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        # The paper's layer-dependent inits (ratio_0_to_1 and ratio_1_to_almost0).
        depth = max(config.num_layers - 1, 1)
        ratio_0_to_1 = config.layer_idx / depth
        ratio_1_to_almost0 = 1.0 - config.layer_idx / max(config.num_layers, 1)
        ddd = torch.arange(D, dtype=torch.float32) / D
        self.maa_x = nn.Parameter(1.0 - ddd ** ratio_1_to_almost0)
        maa = torch.stack([1.0 - ddd ** ratio_1_to_almost0,  # w
                           1.0 - ddd ** ratio_1_to_almost0,  # k
                           1.0 - (ddd ** ratio_1_to_almost0 + 0.3 * ratio_0_to_1),  # v
                           1.0 - ddd ** (0.5 * ratio_1_to_almost0),  # r
                           1.0 - ddd ** (0.5 * ratio_1_to_almost0)])  # g
        self.maa_wkvrg = nn.Parameter(maa)
        self.maa_w1 = nn.Parameter(torch.zeros(D, 5 * MIX_RANK))
        self.maa_w2 = nn.Parameter(torch.empty(5, MIX_RANK, D).uniform_(-1e-2, 1e-2))
        n = torch.arange(H * K, dtype=torch.float32)
        self.time_decay = nn.Parameter(-6 + 5 * (n / max(H * K - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        self.decay_w1 = nn.Parameter(torch.zeros(D, DECAY_RANK))
        self.decay_w2 = nn.Parameter(torch.empty(DECAY_RANK, H * K).uniform_(-1e-2, 1e-2))
        bonus = ratio_0_to_1 * (1 - n / max(H * K - 1, 1)) + ((n + 1) % 3 - 1) * 0.1
        self.bonus = nn.Parameter(bonus.reshape(H, K))
        self.add_attention_projections()  # r, k, v, o as the teacher's q, k, v, o
        self.g_proj = nn.Linear(D, H * K, bias=False)
        self.group_norm = HeadLayerNorm(K, eps=64e-5)

    def featurize(self, x, state):
        H = self.num_heads
        # the five interpolated streams and the decay: one compiled pass on CPU without a gradient (kernels/ddlerp)
        streams, log_decay = ddlerp(x, state.get("shift"), self.maa_x, self.maa_w1, self.maa_wkvrg, self.maa_w2,
                                    self.time_decay, self.decay_w1, self.decay_w2)
        k, v, r, g = batched_linear(streams, [self.k_proj, self.v_proj, self.r_proj, self.g_proj])
        return Features(q=split_heads(r, H), k=split_heads(k, H), v=split_heads(v, H),
                        log_decay=split_heads(log_decay.float(), H), bonus=self.bonus, scale=1.0,
                        context={"g": split_heads(g, H)}, carry={"shift": x[:, -1:]})

    def readout(self, core, f, x):
        gated = self.group_norm(core, f.context["g"], activation="silu")
        return self.o_proj(merge_heads(gated).to(x.dtype))
