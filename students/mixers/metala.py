"""MetaLA — Chou et al. 2024, "MetaLA: Unified Optimal Linear Approximation to Softmax Attention Map", §4.

Key-free gated linear attention: the key is replaced by 1 − α_t, with dynamic per-channel decay
α_t = σ(W_α x_t)^(1/16):  S_t = diag(α_t) S_{t−1} + (1 − α_t) v_tᵀ,  o_t = S_tᵀ q_t / √d;
self-augmentation o_t += σ((q_tᵀ(w_aug ⊙ (1 − α_t))) v_t); short convolution on the input;
head LayerNorm, silu output gate, output projection (as in the authors' released layer).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kernels.decay_gate import decay_gate
from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadLayerNorm, ShortConv, merge_heads, split_heads

GATE_TEMPERATURE = 16.0


class MetaLAMixer(RecurrentMixer):
    name = "metala"
    # qkv_copy: MetaLA has no key; its decay projection takes W_K, since 1 − α_t plays the key's role
    QKV_COPY = {"q_proj": "q_proj", "decay_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}
    IDENTITY_CONVS = ('conv',)  # start as pass-through so copied projections act as in the teacher

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        self.conv = ShortConv(D, config.conv_size, bias=False)
        self.add_attention_projections()  # q, decay (the key's role), v, o as the teacher's q, k, v, o
        self.g_proj = nn.Linear(D, H * K, bias=True)
        self.aug_balance = nn.Parameter(torch.zeros(H, K))
        self.norm = HeadLayerNorm(K, eps=config.norm_eps, affine=False)

    def featurize(self, x, state):
        H = self.num_heads
        xc, conv_cache = self.conv(x, state.get("conv"))
        q, v = split_heads(self.q_proj(xc), H), split_heads(self.v_proj(xc), H)
        decay_in = split_heads(self.decay_proj(xc), H)  # W_K's place under qkv_copy: the window's key
        log_decay, k = decay_gate(decay_in, GATE_TEMPERATURE, complement=True)  # log α_t and 1 − α_t
        return Features(q=q, k=k, v=v, log_decay=log_decay, context={"g": self.g_proj(xc)},
                        carry={"conv": conv_cache}, window_k=decay_in)

    def readout(self, core, f, x):
        # core + σ(v ⊙ q·(w_aug ⊙ (1 − α))) normalised, then the SiLU gate: one compiled pass at inference
        gated = self.norm(core, split_heads(f.context["g"], self.num_heads), activation="silu",
                          augment=(f.q, f.k, f.v, self.aug_balance))
        return self.o_proj(merge_heads(gated).to(x.dtype))
