"""What fewer products per decoded token would buy (issue 19, decode at 1k no slower than the teacher): decode
ms/token at 1,024 tokens of context for the teacher and for gated_deltanet and rwkv as they are and with their
projections fused through weights stacked once (a probe: the stacked copies are made here, not in the students).

- gated_deltanet fused: q, k, v, g, β and α read the same input, so one product with their six weights stacked
  (10 products per layer → 5, counting the MLP's three).
- rwkv fused: the five token-shift interpolations as one batched product, and r, k, v, g (four inputs) as one
  batched product over their stacked weights (16 → 9 per layer).

The two featurize functions below are the mixers' own (students/mixers/gated_deltanet.py, rwkv.py at 913754e)
with only the products changed. Outputs are checked against the unfused model's (same weights) before timing.
32 tokens per call, rounds in turn, each call warm-started from the same cache as `bench.throughput` does;
2 threads.

    python results/speed/decode_fused_projection_probe.py
"""
import collections
import time
import types

import torch
import torch.nn.functional as F

from bench.perf.throughput import _Decoder, embedded_shape_teacher
from students.base import Features
from students.layers import short_conv, split_heads
from students.mixers.rwkv import MIX_RANK
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

torch.set_num_threads(2)
ROUNDS = 11


def gdn_fused_featurize(self, x, state):
    H, HK = self.num_heads, self.num_heads * self.head_dim
    y = F.linear(x, self._fused_weight)
    qkv_in, g, beta_in, decay_in = y[..., :3 * HK], y[..., 3 * HK:4 * HK], y[..., 4 * HK:4 * HK + H], y[..., 4 * HK + H:]
    convs = (self.q_conv, self.k_conv, self.v_conv)
    caches = [state.get(name) for name in ("q_conv", "k_conv", "v_conv")]
    qkv, cache = short_conv(qkv_in, torch.cat([c.weight[:, 0] for c in convs]), None,
                            self.q_conv.activation == "silu", None if caches[0] is None else torch.cat(caches, -1))
    (q_in, k_in, _), (q, k, v), (q_cache, k_cache, v_cache) = (t.chunk(3, dim=-1) for t in (qkv_in, qkv, cache))
    q = F.normalize(split_heads(q, H).float(), dim=-1)
    k = F.normalize(split_heads(k, H).float(), dim=-1)
    beta = torch.sigmoid(beta_in.float())
    log_decay = -self.A_log.float().exp() * F.softplus(decay_in.float() + self.dt_bias)
    return Features(q=q, k=k, v=split_heads(v, H), beta=beta, log_decay=log_decay, context={"g": split_heads(g, H)},
                    window_q=split_heads(q_in, H), window_k=split_heads(k_in, H),
                    carry={"q_conv": q_cache, "k_conv": k_cache, "v_conv": v_cache})


def rwkv_fused_featurize(self, x, state):
    H = self.num_heads
    B, T, D = x.shape
    previous = state.get("shift", x.new_zeros(B, 1, D)).to(x.dtype)
    xx = torch.cat([previous, x[:, :-1]], dim=1) - x
    mix = torch.tanh(torch.addcmul(x, xx, self.maa_x) @ self.maa_w1).view(B * T, 5, MIX_RANK).transpose(0, 1)
    lerp = torch.baddbmm(self.maa_wkvrg[:, None], mix, self.maa_w2).view(5, B, T, D)
    xw, xk, xv, xr, xg = torch.addcmul(x, xx, lerp).unbind(0)
    log_decay = -torch.exp(self.time_decay + torch.tanh(xw @ self.decay_w1) @ self.decay_w2)
    r, k, v, g = torch.bmm(torch.stack([xr, xk, xv, xg]).view(4, B * T, D), self._fused_weight).view(4, B, T, -1)
    return Features(q=split_heads(r, H), k=split_heads(k, H), v=split_heads(v, H),
                    log_decay=split_heads(log_decay.float(), H), bonus=self.bonus, scale=1.0,
                    context={"g": F.silu(g)}, carry={"shift": x[:, -1:]})


def fuse(student, name):
    for layer in student.model.layers:
        mixer = layer.mixer
        if name == "gated_deltanet":
            mixer._fused_weight = torch.cat([m.weight for m in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.g_proj,
                                                                mixer.beta_proj, mixer.decay_proj)])
            mixer.featurize = types.MethodType(gdn_fused_featurize, mixer)
        else:
            mixer._fused_weight = torch.stack([m.weight for m in (mixer.r_proj, mixer.k_proj, mixer.v_proj,
                                                                  mixer.g_proj)]).transpose(1, 2)
            mixer.featurize = types.MethodType(rwkv_fused_featurize, mixer)
    return student


teacher = embedded_shape_teacher()
models = {"teacher": teacher}
for name in ("gated_deltanet", "rwkv"):
    models[name] = build_student(teacher, name, init="random", seed=0).eval()
    models[name + " fused"] = fuse(build_student(teacher, name, init="random", seed=0).eval(), name)
context = 1024
ids = torch.randint(0, teacher.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    for name in ("gated_deltanet", "rwkv"):
        a, b = models[name](ids[:, :64]).logits, models[name + " fused"](ids[:, :64]).logits
        print(f"{name}: fused prefill logits max |difference| {(a - b).abs().max().item():.2e}"
              f" (largest logit {a.abs().max().item():.1f})")
    decoders = {}
    for name, model in models.items():
        out = model(ids, use_cache=True)
        decoders[name] = _Decoder(model, getattr(out, _CACHE_FIELD), ids[:, -1:], 32)
    for name in ("gated_deltanet", "rwkv"):
        steps = []
        for variant in (name, name + " fused"):
            decoders[variant].restart()
            out = models[variant](decoders[variant].token, use_cache=True, **{_CACHE_FIELD: decoders[variant].cache})
            steps.append(out.logits)
            decoders[variant].restart()
        print(f"{name}: fused decode-step logits max |difference| {(steps[0] - steps[1]).abs().max().item():.2e}")
    times = collections.defaultdict(list)
    for _ in range(ROUNDS):
        for name, decoder in decoders.items():
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[name].append((time.perf_counter() - start) / 32 * 1e3)
    teacher_ms = sorted(times["teacher"])[ROUNDS // 2]
    for name in models:
        ts = sorted(times[name])
        ratios = sorted(t / u for t, u in zip(times[name], times["teacher"]))
        print(f"{name:22s} {ts[ROUNDS // 2]:.2f} ms/token (min {ts[0]:.2f}); over the teacher's in the same round: "
              f"median {ratios[ROUNDS // 2]:.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})")
