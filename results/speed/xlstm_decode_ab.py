"""xlstm decode A/B in one process: the committed featurize and stabilised loop (git HEAD, or --old-commit) against
the working tree's, on the same model and cache, alternating per round.

    python results/speed/xlstm_decode_ab.py [--old-commit REV] [--rounds 15]
"""
import argparse
import statistics
import subprocess
import types

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder
from students.mixers.xlstm import MLSTMMixer
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

from decode_ab import ratio_summary, step_logits, time_alternating  # beside this file

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
with torch.inference_mode():
    decoder = _Decoder(model, getattr(model(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
    logits = step_logits(decoder, use)
    times = time_alternating({"xlstm": decoder}, use, args.rounds)
use("new")
old, new = times["xlstm", "old"], times["xlstm", "new"]
print(f"one step's logits, new − old: max |Δ| {(logits['new'] - logits['old']).abs().max().item():.2e}")
print(f"xlstm decode after 1,024 tokens: old {statistics.median(old):.3f}, new {statistics.median(new):.3f} "
      f"ms/token; {ratio_summary(old, new)}, {args.rounds} rounds")
