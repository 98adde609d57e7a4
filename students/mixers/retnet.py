"""Multi-scale retention — Sun et al. 2023, RetNet, eq. 1-9.

S_t = γ_h S_{t−1} + k_t v_tᵀ,  o_t = S_tᵀ q_t / √d, with γ_h = 1 − 2^(−5−h) fixed per head and
rotary (xPos without length extrapolation scaling) on q and k; GroupNorm per head, swish output gate.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadLayerNorm, Rotary, merge_heads, split_heads


class RetNetMixer(RecurrentMixer):
    name = "retnet"
    WINDOW_ROPE = False  # q and k are rotated already

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        self.add_attention_projections()  # q, k, v, o as the teacher's
        self.g_proj = nn.Linear(D, H * K, bias=False)
        self.group_norm = HeadLayerNorm(K, config.norm_eps)
        self.rotary = Rotary(K, config.rope_theta, config.options.get("rope_fn"))

    def featurize(self, x, state):
        H = self.num_heads
        position = state.get("position", 0)
        q, k, v = (split_heads(p(x), H) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.rotary(q, position), self.rotary(k, position)
        log_decay = self.log_gamma(x.device).expand(x.shape[0], x.shape[1], H)
        return Features(q=q, k=k, v=v, log_decay=log_decay, context={"g": self.g_proj(x)},
                        carry={"position": position + x.shape[1]})

    def log_gamma(self, device) -> torch.Tensor:
        """log γ_h, γ_h = 1 − 2^(−5−h) (eq. 8's per-head decay), made once per device (a decode step is short)."""
        where = (torch.device(device), torch.is_inference_mode_enabled())  # inference tensors never reach autograd
        if getattr(self, "_log_gamma", (None,))[0] != where:
            heads = torch.arange(self.num_heads, dtype=torch.float32, device=device)
            self._log_gamma = (where, torch.log1p(-(2.0 ** (-5.0 - heads))))
        return self._log_gamma[1]

    def readout(self, core, f, x):
        gated = self.group_norm(core, split_heads(f.context["g"], self.num_heads), activation="silu")
        return self.o_proj(merge_heads(gated).to(x.dtype))
