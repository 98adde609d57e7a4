"""The most that gated_deltanet's gates taken into the delta rule's pass could save: one layer's mixer alone on a
2,048-token input (fp32, no gradient), with β = σ(W_β x) and log α = −exp(A_log)·softplus(W_α x + b) computed as
today ("old") against the raw projections handed on as they are ("new": wrong outputs, timing only), 200 rounds
alternating (`ab_rounds.py`).

    python results/speed/gdn_gate_bound_probe.py
"""
import statistics

import torch
from ab_rounds import call_rounds, paired

from bench.perf.heap import set_steady
from bench.perf.throughput import embedded_shape_teacher
from bench.provenance import header
from students.base import Features
from students.layers import short_conv_normalized, split_heads, stacked_linear, stacked_weight
from students.mixers.gated_deltanet import GatedDeltaNetMixer
from students.surgery import build_student


def featurize_raw_gates(self, x, state):  # as GatedDeltaNetMixer.featurize, without the gates' activations
    H, HK = self.num_heads, self.num_heads * self.head_dim
    projected = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.beta_proj,
                                   self.decay_proj])
    qkv_in, g, beta_in, decay_in = projected.split([3 * HK, HK, H, H], dim=-1)
    conv_weight = stacked_weight([self.q_conv, self.k_conv, self.v_conv])[:, 0]
    qk, v, conv_cache = short_conv_normalized(qkv_in, conv_weight, None, self.q_conv.activation == "silu",
                                              state.get("qkv_conv"), 2 * HK, self.head_dim)
    return Features(q=qk[..., :H, :], k=qk[..., H:, :], v=split_heads(v, H), beta=beta_in, log_decay=decay_in,
                    context={"g": split_heads(g, H)}, window_q=split_heads(qkv_in[..., :HK], H),
                    window_k=split_heads(qkv_in[..., HK:2 * HK], H), carry={"qkv_conv": conv_cache})


print(header(), "| heap", set_steady())
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
model = build_student(teacher, "gated_deltanet", init="random", seed=0).eval()
mixer = next(m for m in model.modules() if isinstance(m, GatedDeltaNetMixer))
sides = {"old": GatedDeltaNetMixer.featurize, "new": featurize_raw_gates}
x = torch.randn(1, 2048, teacher.config.hidden_size, generator=torch.Generator().manual_seed(1))


def use(side):
    GatedDeltaNetMixer.featurize = sides[side]


times = call_rounds(mixer, (x,), use, 200, sides)
use("old")
print(f"gated_deltanet's mixer, 2,048 tokens: gates as is {1e3 * statistics.median(times['old']):.3f} ms, gates skipped "
      f"{1e3 * statistics.median(times['new']):.3f} ms; {paired(times['old'], times['new'])}")
