"""The attention mixer's KV cache kept head-major and grouped, (B, kv heads, S, K), read by sdpa in place with
`enable_gqa` (the working tree), against the layout it replaced, (B, S, kv heads, K) expanded to every query head
for each decoded token (`old_forward`, copied here from 6643c70), in one process: ms per decoded token after a
context of N tokens (filled by 2,048-token chunks, as bench.throughput does; 32 tokens a call), the sides alternating
by round, the teacher timed in the same rounds. Students: attention (the softmax control) and a gla hybrid keeping
attention in its second layer.

    python results/speed/attention_cache_ab.py [rounds]
"""
import statistics
import sys
import time

import torch

from bench.perf.heap import set_steady
from bench.perf.throughput import _Decoder, embedded_shape_teacher
from bench.provenance import header
from students.mixers.attention import AttentionMixer
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
print(header(), "| heap", set_steady())
torch.set_num_threads(2)


def old_forward(self, x, state=None, backend="auto"):  # 6643c70's
    state = state or {}
    position = state.get("position", 0)
    q, k, v = self._project(x, position)
    if "k" in state:
        k, v = torch.cat([state["k"], k], dim=1), torch.cat([state["v"], v], dim=1)
    o = self._attend(q, self._expand(k), self._expand(v), position, backend)
    return self.o_proj(merge_heads(o)), {"k": k, "v": v, "position": position + x.shape[1]}


from students.layers import merge_heads  # noqa: E402

new_forward = AttentionMixer.forward


def use(side):
    AttentionMixer.forward = old_forward if side == "old" else new_forward


teacher = embedded_shape_teacher()
models = {"attention": build_student(teacher, "attention", init="random", seed=0).eval(),
          "gla+attention[1]": build_student(teacher, "gla", init="random", seed=0, keep_attention=[1]).eval()}
gen = torch.Generator().manual_seed(0)
for context in (1024, 8192, 32768):
    ids = torch.randint(0, teacher.config.vocab_size, (1, context), generator=gen)
    with torch.no_grad():
        cache = None
        for start in range(0, context, 2048):
            cache = teacher(ids[:, start:start + 2048], use_cache=True, past_key_values=cache).past_key_values
        teacher_decoder = _Decoder(teacher, cache, ids[:, -1:], 32)
        for name, model in models.items():
            decoders, tokens = {}, {}
            for side in ("old", "new"):
                use(side)
                cache = None
                for start in range(0, context, 2048):
                    cache = getattr(model(ids[:, start:start + 2048], use_cache=True, **{_CACHE_FIELD: cache}),
                                    _CACHE_FIELD)
                decoders[side] = _Decoder(model, cache, ids[:, -1:], 32)
                decoders[side].restart()
                decoders[side].run(16)
                tokens[side] = decoders[side].token
            times = {"old": [], "new": [], "teacher": []}
            for r in range(rounds):
                for side in (("old", "new", "teacher") if r % 2 == 0 else ("teacher", "new", "old")):
                    decoder = teacher_decoder if side == "teacher" else decoders[side]
                    if side != "teacher":
                        use(side)
                    decoder.warm_restart()
                    start = time.perf_counter()
                    decoder()
                    times[side].append((time.perf_counter() - start) / 32)
            ratios = [o / n for o, n in zip(times["old"], times["new"])]
            q = statistics.quantiles(ratios, n=4)
            print(f"{name} at {context}: the 16th decoded token the same either side: "
                  f"{bool(torch.equal(tokens['old'], tokens['new']))}; ms/token old "
                  f"{1e3 * statistics.median(times['old']):.3f}, new {1e3 * statistics.median(times['new']):.3f}, teacher "
                  f"{1e3 * statistics.median(times['teacher']):.3f}; old / new per round {statistics.median(ratios):.3f} "
                  f"(quartiles {q[0]:.3f}-{q[2]:.3f}); new / teacher "
                  f"{statistics.median(n / t for n, t in zip(times['new'], times['teacher'])):.3f}", flush=True)
    use("new")
