"""Prefill A/B in one process: gated_deltanet's q and k heads L2-normalised inside the short convolution's compiled
pass (`students.layers.short_conv_normalized`, new) against the compiled convolution followed by F.normalize (old,
the code before), alternating per round, with the floor and the teacher timed in the same rounds (fp32, batch 1,
no_grad, the embedded teacher's shape); then the convolution alone at (1, T, 768) as gated_deltanet calls it.

    python results/speed/qk_norm_ab.py [--rounds 11] [--lengths 2048,16384]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import students.mixers.gated_deltanet as gdn_mixer
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from kernels import native
from students.layers import short_conv, short_conv_normalized
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=11)
parser.add_argument("--lengths", default="2048,16384")
args = parser.parse_args()
torch.set_num_threads(2)
assert native.module() is not None, "the extension could not be built here"


def separate(x, weight, bias, silu, cache, channels, group):  # the code before: convolution, then F.normalize
    y, cache = short_conv(x, weight, bias, silu, cache)
    return F.normalize(y[..., :channels].unflatten(-1, (channels // group, group)).float(), dim=-1), \
        y[..., channels:], cache


FORMS = {"old": separate, "new": short_conv_normalized}


def use(mode):
    gdn_mixer.short_conv_normalized = FORMS[mode]


def median_ms(times):
    return statistics.median(times) * 1e3


teacher = load_teacher(str(EMBEDDED_TEACHER))
student = build_student(teacher, "gated_deltanet", init="random", seed=0).eval()
floor = build_floor(teacher)
for length in map(int, args.lengths.split(",")):
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    times = {key: [] for key in ("floor", "teacher", "old", "new")}
    with torch.no_grad():
        logits = {}
        for mode in ("old", "new"):
            use(mode)
            logits[mode] = student(ids).logits
        for r in range(args.rounds + 1):  # round 0 warms up
            calls = [("floor", floor), ("teacher", teacher)]
            calls += [(mode, student) for mode in (("old", "new") if r % 2 else ("new", "old"))]
            for key, model in calls:
                if key in FORMS:
                    use(key)
                start = time.perf_counter()
                model(ids)
                if r:
                    times[key].append(time.perf_counter() - start)
        x = torch.randn(1, length, 768 + 256)[..., :768]  # strided over time, as a split of the stacked projection
        weight = torch.randn(768, 4)
        conv = {mode: [] for mode in FORMS}
        for r in range(args.rounds + 1):
            for mode in (("old", "new") if r % 2 else ("new", "old")):
                start = time.perf_counter()
                FORMS[mode](x, weight, None, True, None, 512, 64)
                if r:
                    conv[mode].append(time.perf_counter() - start)
    ms = {key: median_ms(value) for key, value in times.items()}
    print(f"prefill {length:,} tokens, medians of {args.rounds} rounds: floor {ms['floor']:.1f} ms, "
          f"teacher {ms['teacher']:.1f} ms ({ms['teacher'] / ms['floor']:.2f} x floor); gated_deltanet old "
          f"{ms['old']:.1f} ms ({ms['old'] / ms['floor']:.2f} x floor), new {ms['new']:.1f} ms "
          f"({ms['new'] / ms['floor']:.2f} x floor), old / new {ms['old'] / ms['new']:.2f}; logits differ by "
          f"{(logits['old'] - logits['new']).abs().max().item():.1e} (largest {logits['old'].abs().max().item():.0f}); "
          f"convolution + normalisation alone old {median_ms(conv['old']):.2f} ms, new {median_ms(conv['new']):.2f} ms",
          flush=True)
