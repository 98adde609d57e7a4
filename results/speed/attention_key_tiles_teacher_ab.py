"""A/B at the model level: the embedded-shape teacher's no-gradient forward (batch 1, every position's logits, as a
frozen teacher's forward while a student trains) on sdpa, on the compiled attention from `base` (untiled products)
and on today's (tiled), the three taking turns each round; per-round ratios' medians and quartiles. Logits of the
two compiled builds compared bit for bit first.

    python results/speed/attention_key_tiles_teacher_ab.py [base] [rounds]
"""
import statistics
import sys
import time

import torch
from native_variant import build_native

import kernels.causal_attention.native as causal_native
from bench.perf.heap import set_steady
from bench.perf.throughput import embedded_shape_teacher
from bench.provenance import header
from students.teacher_attention import compiled_attention

base = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
print(header(), "| heap", set_steady(), "| base", base)
torch.set_num_threads(2)
builds = {"untiled": build_native("attention_untiled", base), "tiled": build_native("attention_tiled", None)}
causal_native.MAX_LENGTH = 8192  # both builds take the lengths timed here
teacher = embedded_shape_teacher().eval()
current = {"build": None}
causal_native.native.module = lambda: builds[current["build"]]  # which build the compiled call loads


def forward(side, ids):
    if side == "sdpa":
        return teacher(ids).logits
    current["build"] = side
    with compiled_attention([teacher]):
        return teacher(ids).logits


with torch.no_grad():
    for T in (2048, 4096, 8192):
        ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
        assert torch.equal(forward("untiled", ids), forward("tiled", ids)), "logits differ"
        times = {side: [] for side in ("sdpa", "untiled", "tiled")}
        for _ in range(rounds):
            for side in times:
                start = time.perf_counter()
                forward(side, ids)
                times[side].append(time.perf_counter() - start)
        line = ", ".join(f"{side} {1e3 * statistics.median(t):.0f} ms" for side, t in times.items())
        for other in ("untiled", "sdpa"):
            ratios = [o / t for o, t in zip(times[other], times["tiled"])]
            q = statistics.quantiles(ratios, n=4)
            line += f" | {other} / tiled {statistics.median(ratios):.3f} ({q[0]:.3f}-{q[2]:.3f})"
        print(f"T={T:5d}: {line}", flush=True)
