"""The attention mixer's KV cache kept head-major and grouped, (B, kv heads, S, K), read by sdpa in place with
`enable_gqa` (the working tree), against the layout it replaced, (B, S, kv heads, K) expanded to every query head
for each decoded token (`old_forward`, copied here from 6643c70), in one process: ms per decoded token after a
context of N tokens (filled by 2,048-token chunks, as bench.throughput does; 32 tokens a call), the sides alternating
by round, the teacher timed in the same rounds (`ab_rounds.py`). Students: attention (the softmax control) and a gla
hybrid keeping attention in its second layer.

    python results/speed/attention_cache_ab.py [rounds]
"""
import statistics
import sys

import torch
from ab_rounds import decode_sides, filled_decoder, paired

from bench.perf.heap import set_steady
from bench.perf.throughput import embedded_shape_teacher
from bench.provenance import header
from students.layers import merge_heads
from students.mixers.attention import AttentionMixer
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
        teacher_decoder = filled_decoder(teacher, ids)
        for name, model in models.items():
            same, times = decode_sides(model, teacher_decoder, ids, use, rounds)
            print(f"{name} at {context}: the 16th decoded token the same either side: {same}; ms/token old "
                  f"{1e3 * statistics.median(times['old']):.3f}, new {1e3 * statistics.median(times['new']):.3f}, "
                  f"teacher {1e3 * statistics.median(times['reference']):.3f}; {paired(times['old'], times['new'])}; "
                  f"new / teacher {statistics.median(n / t for n, t in zip(times['new'], times['reference'])):.3f}",
                  flush=True)
    use("new")
