"""Prefill A/B in one process: rwkv's token shift and decay as one compiled pass (`kernels.ddlerp`, native, new)
against its torch form (old), everything else alike (the recurrence compiled in both), alternating per round, with
the floor and the teacher timed in the same rounds (fp32, batch 1, no_grad, the embedded teacher's shape); then
decode after 1,024 tokens the same way (`decode_ab.py`, the teacher alongside).

    python results/speed/ddlerp_ab.py [--rounds 11] [--lengths 2048,16384] [--decode-rounds 15]
"""
import argparse
import functools
import statistics
import time

import torch

import students.mixers.rwkv as rwkv_mixer
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from kernels import native
from kernels.ddlerp import ddlerp
from bench.perf.throughput import _Decoder
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

from decode_ab import ratio_summary, step_logits, time_alternating  # beside this file

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=11)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--decode-rounds", type=int, default=15)
args = parser.parse_args()
torch.set_num_threads(2)
assert native.module() is not None, "the extension could not be built here"
FORMS = {"old": functools.partial(ddlerp, backend="torch"), "new": functools.partial(ddlerp, backend="native")}


def use(mode):
    rwkv_mixer.ddlerp = FORMS[mode]


teacher = load_teacher(str(EMBEDDED_TEACHER))
student = build_student(teacher, "rwkv", init="random", seed=0).eval()
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
    ms = {key: statistics.median(value) * 1e3 for key, value in times.items()}
    print(f"prefill {length:,} tokens, medians of {args.rounds} rounds: floor {ms['floor']:.1f} ms, "
          f"teacher {ms['teacher']:.1f} ms ({ms['teacher'] / ms['floor']:.2f} x floor); rwkv old {ms['old']:.1f} ms "
          f"({ms['old'] / ms['floor']:.2f} x floor), new {ms['new']:.1f} ms ({ms['new'] / ms['floor']:.2f} x floor), "
          f"old / new {ms['old'] / ms['new']:.2f}; logits differ by "
          f"{(logits['old'] - logits['new']).abs().max().item():.1e} (largest {logits['old'].abs().max().item():.0f})")

ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
models = {"teacher": teacher, "rwkv": student}
with torch.inference_mode():
    decoders = {name: _Decoder(m, getattr(m(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
                for name, m in models.items()}
    step = step_logits(decoders["rwkv"], use)
    times = time_alternating(decoders, use, args.decode_rounds)
teacher_ms = statistics.median(times["teacher", "old"] + times["teacher", "new"])
old, new = times["rwkv", "old"], times["rwkv", "new"]
print(f"decode after 1,024 tokens, ms/token, medians of {args.decode_rounds} rounds: teacher {teacher_ms:.3f}; rwkv "
      f"old {statistics.median(old):.3f} new {statistics.median(new):.3f} {ratio_summary(old, new)}, vs teacher "
      f"{statistics.median(old) / teacher_ms:.2f} -> {statistics.median(new) / teacher_ms:.2f}; logits differ by "
      f"{(step['new'] - step['old']).abs().max().item():.1e}")
