"""Softmax attention, identical to a Llama-family teacher's (RoPE, grouped-query heads): the control.

o_t = Σ_{s≤t} softmax_s(q_t·k_s / √d) v_s. Its "state" is the KV cache, which grows with the context, kept as the
teacher's: (B, kv heads, S, K), its grouped heads read in place.
Options: qk_norm (Qwen3: RMSNorm on each head of q and k before RoPE); q/k/v biases (Qwen2) are added by
`build_mixer` from the `attention_bias` option, as for every student.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.base import Mixer, MixerConfig
from students.layers import HeadRMSNorm, Rotary, merge_heads, split_heads


class AttentionMixer(Mixer):
    name = "attention"
    QKV_COPY = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
                "q_norm": "q_norm", "k_norm": "k_norm"}
    EXPAND_KV = False  # keeps the teacher's grouped-query layout

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, G, K = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.num_kv_heads = G
        self.q_proj = nn.Linear(D, H * K, bias=False)
        self.k_proj = nn.Linear(D, G * K, bias=False)
        self.v_proj = nn.Linear(D, G * K, bias=False)
        self.o_proj = nn.Linear(H * K, D, bias=False)
        if config.options.get("qk_norm", False):
            self.q_norm = HeadRMSNorm(K, config.norm_eps)
            self.k_norm = HeadRMSNorm(K, config.norm_eps)
        self.rotary = Rotary(K, config.rope_theta, config.options.get("rope_fn"))

    def _project(self, x, position):
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(x), self.num_kv_heads)
        v = split_heads(self.v_proj(x), self.num_kv_heads)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q).to(x.dtype), self.k_norm(k).to(x.dtype)
        return self.rotary(q, position), self.rotary(k, position), v

    def _expand(self, kv):
        return kv.repeat_interleave(self.num_heads // self.num_kv_heads, dim=2)

    def _attend(self, q, k, v, past: int, backend: str):
        """q (B, T, H, K); k, v (B, past+T, H, K) -> (B, T, H, K)."""
        T, S = q.shape[1], k.shape[1]
        if backend == "naive":
            outputs = []
            for t in range(T):
                scores = torch.einsum("bhk,bshk->bhs", q[:, t].float(), k[:, :past + t + 1].float()) * self.head_dim ** -0.5
                outputs.append(torch.einsum("bhs,bshv->bhv", scores.softmax(-1), v[:, :past + t + 1].float()))
            return torch.stack(outputs, 1).to(q.dtype)
        # no mask for a first chunk (causal) or for one token (it sees every key): sdpa's fused kernels then run
        mask = None if past == 0 or T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(past)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, is_causal=past == 0 and T > 1)
        return o.transpose(1, 2)

    def forward(self, x, state=None, backend="auto"):
        state = state or {}
        position = state.get("position", 0)
        q, k, v = self._project(x, position)
        if "k" in state:
            k = torch.cat([state["k"], k.transpose(1, 2)], dim=2)
            v = torch.cat([state["v"], v.transpose(1, 2)], dim=2)
            o = self._attend_cache(q, k, v, position, backend)
        else:
            o = self._attend(q, self._expand(k), self._expand(v), 0, backend)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # views: the first appended token makes them contiguous
        # the cache (B, kv heads, S, K), as the teacher's and as sdpa reads it: a token appends along S, and its
        # query reads the grouped heads in place (no copy of the cache expanded to every query head)
        return self.o_proj(merge_heads(o)), {"k": k, "v": v, "position": position + x.shape[1]}

    def _attend_cache(self, q, k, v, past: int, backend: str):
        """q (B, T, H, K) after `past` cached tokens; k, v (B, G, past+T, K) -> (B, T, H, K)."""
        if backend == "naive":
            return self._attend(q, self._expand(k.transpose(1, 2)), self._expand(v.transpose(1, 2)), past, backend)
        T, S = q.shape[1], k.shape[2]
        mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(past)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask,
                                           enable_gqa=self.num_kv_heads != self.num_heads)
        return o.transpose(1, 2)

    def core(self, x, backend="auto"):
        q, k, v = self._project(x, 0)
        k, v = self._expand(k), self._expand(v)
        return self._attend(q, k, v, 0, backend), v

    def mixer_matrix(self, x):
        q, k, _ = self._project(x, 0)
        scores = torch.einsum("bthk,bshk->bhts", q.float(), self._expand(k).float()) * self.head_dim ** -0.5
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)
