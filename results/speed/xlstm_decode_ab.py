"""xlstm decode A/B in one process: the committed featurize and stabilised loop (git HEAD, or --old-commit) against
the working tree's, on the same model and cache, alternating per round.

    python results/speed/xlstm_decode_ab.py [--old-commit REV] [--rounds 15]
"""
import argparse
import statistics
import subprocess
import time
import types

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder
from students.mixers.xlstm import MLSTMMixer
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--old-commit", default="HEAD")
parser.add_argument("--rounds", type=int, default=15)
args = parser.parse_args()
old = types.ModuleType("xlstm_old")
exec(subprocess.run(["git", "show", f"{args.old_commit}:students/mixers/xlstm.py"], capture_output=True, text=True,
                    check=True).stdout, old.__dict__)
variants = {"old": (old.MLSTMMixer.featurize, old.MLSTMMixer._stabilised_loop),
            "new": (MLSTMMixer.featurize, MLSTMMixer._stabilised_loop)}


def use(name):
    MLSTMMixer.featurize, MLSTMMixer._stabilised_loop = variants[name]


teacher = load_teacher(str(EMBEDDED_TEACHER))
model = build_student(teacher, "xlstm", init="random", seed=0).eval()
ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
times = {"old": [], "new": []}
with torch.inference_mode():
    decoder = _Decoder(model, getattr(model(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
    logits = {}
    for name in ("old", "new"):
        use(name)
        decoder.restart()
        logits[name] = model(ids[:, -1:], use_cache=True, **{_CACHE_FIELD: decoder.cache}).logits
    decoder.restart()
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 else ("new", "old")):
            use(name)
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[name].append((time.perf_counter() - start) / 32 * 1e3)
use("new")
print(f"one step's logits, new − old: max |Δ| {(logits['new'] - logits['old']).abs().max().item():.2e}")
ratios = sorted(a / b for a, b in zip(times["old"], times["new"]))
print(f"xlstm decode after 1,024 tokens: old {statistics.median(times['old']):.3f}, new {statistics.median(times['new']):.3f} "
      f"ms/token; old/new per round median {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}], "
      f"{args.rounds} rounds")
