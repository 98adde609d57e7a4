"""Decode A/B in one process: the kept weight stacks' check and reads (`students.layers.stacked_weight`) and
gated_deltanet's featurize (q and k normalised in one call) as committed (git HEAD, or --old-commit) against the
working tree's, on the same models and caches, alternating per round.

    python results/speed/decode_stack_check_ab.py [--old-commit REV] [--rounds 15] [--students a,b]
"""
import argparse
import statistics
import subprocess
import types

import torch

import students.layers as layers
import students.mixers.gated_deltanet as gdn
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

from decode_ab import ratio_summary, step_logits, time_alternating  # beside this file

parser = argparse.ArgumentParser()
parser.add_argument("--old-commit", default="HEAD")
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--students", default="gated_deltanet,mamba,xlstm")
args = parser.parse_args()


def old_source(path):
    return subprocess.run(["git", "show", f"{args.old_commit}:{path}"], capture_output=True, text=True, check=True).stdout


# the old stacked_weight runs on the live module's kept-stack scope (its own dict keys, so the two never share)
old_layers = types.ModuleType("layers_old")
exec(old_source("students/layers.py"), old_layers.__dict__)
old_layers._keeping_stacks = layers._keeping_stacks


def old_stacked_weight(linears, batched=False):
    old_layers._KEPT_STACKS = layers._KEPT_STACKS if layers._KEPT_STACKS is None else \
        layers._KEPT_STACKS.setdefault("old", {})
    return old_layers.stacked_weight(linears, batched)


old_gdn = types.ModuleType("gdn_old")
exec(old_source("students/mixers/gated_deltanet.py"), old_gdn.__dict__)
old_gdn.stacked_weight, old_gdn.stacked_linear = old_stacked_weight, layers.stacked_linear
variants = {"old": (old_stacked_weight, old_gdn.GatedDeltaNetMixer.featurize),
            "new": (layers.stacked_weight, gdn.GatedDeltaNetMixer.featurize)}


def use(name):
    weight_fn, featurize = variants[name]
    layers.stacked_weight = gdn.stacked_weight = weight_fn
    gdn.GatedDeltaNetMixer.featurize = featurize


torch.set_num_threads(2)
teacher = load_teacher(str(EMBEDDED_TEACHER))
ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
for student in args.students.split(","):
    model = build_student(teacher, student, init="random", seed=0).eval()
    with torch.inference_mode():
        decoder = _Decoder(model, getattr(model(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
        logits = step_logits(decoder, use, layers.kept_weight_stacks)
        times = time_alternating({student: decoder}, use, args.rounds)
    use("new")
    old, new = times[student, "old"], times[student, "new"]
    print(f"{student} decode after 1,024 tokens: old {statistics.median(old):.3f}, new {statistics.median(new):.3f} "
          f"ms/token; {ratio_summary(old, new)}, {args.rounds} rounds; one step's logits new − old max |Δ| "
          f"{(logits['new'] - logits['old']).abs().max().item():.2e}", flush=True)
