"""The most that taking Mamba-2's Δ·B and D·x into the scan could save in mamba's prefill: whole fp32 prefills
(batch 1, no gradient, use_cache=False) with both terms dropped ("new": k = B unscaled, no D skip; wrong outputs,
timing only) against the two torch passes the model ran for them before bbbf752 ("old": `mamba_ssd_terms_ab.py`'s
copy of that code), the sides alternating by round, the floor before each call (`ab_rounds.py`); medians of 25
rounds at 2,048 tokens.

    python results/speed/mamba_scale_skip_bound_probe.py
"""
import dataclasses
import statistics

import torch
from ab_rounds import prefill_rounds
from mamba_ssd_terms_ab import featurize_old, finish_core_old

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from students.mixers.mamba import Mamba2Mixer
from students.surgery import build_student

set_steady()
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
floor = build_floor(teacher)
ids = torch.randint(0, teacher.config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))
model = build_student(teacher, "mamba", init="random", seed=0).eval()
featurize = Mamba2Mixer.featurize


def featurize_without_terms(self, x, state):  # today's featurize with Δ and D dropped
    return dataclasses.replace(featurize(self, x, state), key_scale=None, skip=None)


def use(side):
    Mamba2Mixer.featurize, Mamba2Mixer.finish_core = ((featurize_old, finish_core_old) if side == "old" else
                                                      (featurize_without_terms, lambda self, o, f: o))


times = prefill_rounds(model, floor, ids, use, 25)
use("old")
f = statistics.median(times["floor_old"] + times["floor_new"])
a, n = statistics.median(times["old"]), statistics.median(times["new"])
print(f"mamba: floor {1e3 * f:.1f} ms, as before bbbf752 {1e3 * a:.1f} ({a / f:.3f}x), Δ·B and D·x skipped "
      f"{1e3 * n:.1f} ({n / f:.3f}x), saving {1e3 * (a - n):.2f} ms")
