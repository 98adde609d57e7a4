"""A/B in one process: gated_deltanet's featurize before the seventeenth stop's change (three conv caches joined and split each
call, q and k normalised apart, the conv weights concatenated each call) against the current one (one stacked
cache, the conv weights kept stacked while decoding). Same weights; prints the largest
output difference, then decode ms/token at 1,024 context and prefill ms at 2,048 and 16,384, models in turn,
medians of the rounds and the median of per-round old/new ratios.

    python results/speed/gdn_featurize_ab.py [--rounds 9]
"""
import argparse
import copy
import statistics
import time
import types

import torch
import torch.nn.functional as F

from bench.perf.throughput import _Decoder, embedded_shape_teacher
from students.base import Features
from students.layers import short_conv, split_heads, stacked_linear
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=9)
args = parser.parse_args()


def old_featurize(self, x, state):  # the code of 5c5cb8c
    H, HK = self.num_heads, self.num_heads * self.head_dim
    projected = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.beta_proj,
                                   self.decay_proj])
    qkv_in, g, beta_in, decay_in = projected.split([3 * HK, HK, H, H], dim=-1)
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


torch.set_num_threads(2)
teacher = embedded_shape_teacher()
new = build_student(teacher, "gated_deltanet", init="random", seed=0).eval()
old = copy.deepcopy(new)
for layer in old.model.layers:
    layer.mixer.featurize = types.MethodType(old_featurize, layer.mixer)
models = {"old": old, "new": new}
gen = torch.Generator().manual_seed(0)
with torch.inference_mode():
    ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=gen)
    outs = {name: model(ids, use_cache=True) for name, model in models.items()}
    print("prefill logits max |old − new|:", (outs["old"].logits - outs["new"].logits).abs().max().item())
    decoders = {name: _Decoder(model, getattr(outs[name], _CACHE_FIELD), ids[:, -1:], 32) for name, model in models.items()}
    tokens = {}
    for name, decoder in decoders.items():
        decoder.restart()
        decoder.run(8)
        tokens[name] = decoder.token
    print("decoded token after 8 steps equal:", bool((tokens["old"] == tokens["new"]).all()))
    results = {}
    for length in (2048, 16384):
        x = torch.randint(0, teacher.config.vocab_size, (1, length), generator=gen)
        times = {name: [] for name in models}
        for _ in range(args.rounds if length == 2048 else max(3, args.rounds // 3)):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
        results[f"prefill {length} ms"] = times
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, decoder in decoders.items():
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[name].append((time.perf_counter() - start) / 32)
    results["decode at 1024 ms/token"] = times
for what, times in results.items():
    ratios = [o / n for o, n in zip(times["old"], times["new"])]
    print(f"{what}: old {statistics.median(times['old']) * 1e3:.2f}, new {statistics.median(times['new']) * 1e3:.2f}, "
          f"old/new per round median {statistics.median(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f})")
