"""Linear attention — Katharopoulos et al. 2020, eq. 4-6; Hedgehog feature map — Zhang et al. 2024, eq. 5.

S_t = S_{t−1} + φ(k_t) v_tᵀ,  z_t = z_{t−1} + φ(k_t),  o_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + ε)
The normaliser rides along as an extra value column of ones, so one kernel call computes both.
Options: feature_map ∈ {"elu", "hedgehog", "identity"} (default "elu"); normalize (default: on unless identity);
window (every recurrent student's): with normalize, window=W and the hedgehog map is LoLCATs (Zhang et al. 2024,
arXiv 2410.10254) eq. 7, the window sharing the normaliser z.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import merge_heads, split_heads

FEATURE_MAPS = ("elu", "hedgehog", "identity")
EPS = 1e-6


class LinearAttentionMixer(RecurrentMixer):
    name = "linear_attention"
    OPTIONS = {**RecurrentMixer.OPTIONS, "feature_map": FEATURE_MAPS, "normalize": (True, False)}

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        H, K = config.num_heads, config.head_dim
        self.feature_map = config.options.get("feature_map", "elu")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"linear_attention: unknown feature_map {self.feature_map!r}; choose one of {FEATURE_MAPS}")
        self.normalize = config.options.get("normalize", self.feature_map != "identity")
        self.add_attention_projections()  # q, k, v, o as the teacher's
        if self.feature_map == "hedgehog":
            # Per-head learnable map, identity at init so φ starts as softmax(±x) of the copied q/k.
            self.hedgehog = nn.Parameter(torch.eye(K).repeat(H, 1, 1))

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_map == "elu":
            return F.elu(x.float()) + 1
        if self.feature_map == "hedgehog":
            projected = torch.einsum("bthk,hkj->bthj", x.float(), self.hedgehog.float())
            return torch.cat([projected.softmax(-1), (-projected).softmax(-1)], dim=-1)
        return x.float()

    def featurize(self, x, state):
        H = self.num_heads
        q_raw, k_raw, v = (split_heads(p(x), H) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.phi(q_raw), self.phi(k_raw)
        V = v.shape[-1]
        if self.normalize:
            v = torch.cat([v.float(), v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)], dim=-1)
        # With normalisation the scale cancels; without, use the attention scale of the head dim.
        return Features(q=q, k=k, v=v, scale=1.0 if self.normalize else self.head_dim ** -0.5, value_dim=V,
                        window_q=q_raw, window_k=k_raw)  # LoLCATs: the window scores with q, k, not φ(q), φ(k)

    def finish_core(self, o, f):
        if not self.normalize:
            return o
        return o[..., :f.value_dim] / (o[..., f.value_dim:] + EPS)

    def finish_matrix(self, matrix, f):
        if not self.normalize:
            return matrix
        return matrix / (matrix.sum(-1, keepdim=True) + EPS)

    def finish_terms(self, terms, f):
        if not self.normalize:
            return terms
        return {**terms, "row_scale": 1.0 / (self.matrix_row_sums(terms) + EPS)}

    def readout(self, core, f, x):
        return self.o_proj(merge_heads(core).to(x.dtype))
