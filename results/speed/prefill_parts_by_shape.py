"""Where a prefill's time goes, part by part, for the floor and some students at a teacher shape: the mixer (and
inside it featurize / mix / read-out), the MLPs, the LM head, and the rest (norms, residual adds, embedding), summed
over layers, medians over rounds (the models take turns), fp32, batch 1, no gradient, 2 threads.

    python results/speed/prefill_parts_by_shape.py --teacher-shape smollm2-135m --students gla,rwkv --length 2048
"""
import argparse
import collections
import statistics
import time

import torch

from bench.perf.throughput import TEACHER_SHAPES, build_floor, shaped_teacher
from bench.provenance import machine
from students.surgery import build_student

parser = argparse.ArgumentParser()
parser.add_argument("--teacher-shape", choices=sorted(TEACHER_SHAPES), default="embedded")
parser.add_argument("--students", default="gla,rwkv")
parser.add_argument("--length", type=int, default=2048)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
torch.set_num_threads(2)
teacher = shaped_teacher(args.teacher_shape)
models = {"floor": build_floor(teacher)}
models.update({name: build_student(teacher, name, init="random", seed=0).eval() for name in args.students.split(",")})
spent = collections.defaultdict(float)


def timed(obj, attr, key):
    inner = getattr(obj, attr)

    def call(*a, **k):
        start = time.perf_counter()
        out = inner(*a, **k)
        spent[key] += time.perf_counter() - start
        return out
    setattr(obj, attr, call)


for model in models.values():
    for layer in model.model.layers:
        timed(layer.mixer, "forward", "mixer")
        for part in ("featurize", "mix", "readout"):
            if hasattr(layer.mixer, part):
                timed(layer.mixer, part, f"  {part}")
        timed(layer.mlp, "forward", "mlp")
    timed(model.lm_head, "forward", "lm_head")
ids = torch.randint(0, teacher.config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(0))
record = collections.defaultdict(list)
with torch.no_grad():
    for round_ in range(args.repeats + 1):
        for name, model in models.items():
            spent.clear()
            start = time.perf_counter()
            model(ids, use_cache=False)
            spent["total"] = time.perf_counter() - start
            spent["rest"] = spent["total"] - spent["mixer"] - spent["mlp"] - spent["lm_head"]
            if round_:  # the first round warms up
                for key, value in spent.items():
                    record[name, key].append(value)
info = machine()
print(f"# {args.teacher_shape} shape, T={args.length}: {info.get('device_name')} {info.get('cpu_capability')}, "
      f"torch {torch.__version__}, commit {info.get('commit')}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
      f"medians of {args.repeats} (ms)")
keys = ["mixer", "  featurize", "  mix", "  readout", "mlp", "lm_head", "rest", "total"]
print(f"{'':14s}" + "".join(f"{name:>16s}" for name in models))
for key in keys:
    cells = [statistics.median(record[name, key]) * 1e3 if record[name, key] else None for name in models]
    print(f"{key:14s}" + "".join(f"{c:16.1f}" if c is not None else f"{'–':>16s}" for c in cells))
