"""A/B in one process: the linear recurrence's decays exponentiated inside the compiled scan (new) against a pass of
their own before it (old: the extension built at --old), alternating per round; each scan alone at the embedded
shape (4 heads of 64 × 64), then whole models (fp32, batch 1, no_grad) with the floor timed in the same rounds.

    python results/speed/scan_decay_ab.py --old 2044ec4 [--rounds 11] [--lengths 2048,16384] [--students rwkv,gla]
"""
import argparse
import functools

import torch

from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import build_floor
from kernels.chunking import DENORMALS
from native_revision import modules, summary, time_alternating, use_module  # beside this file
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--old", required=True)
parser.add_argument("--rounds", type=int, default=11)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--students", default="rwkv,gla,mamba,gated_deltanet")
args = parser.parse_args()
torch.set_num_threads(2)
variants = modules(args.old)
teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher)
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in args.students.split(",")}
for length in map(int, args.lengths.split(",")):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, length, 4, 64, generator=g) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)  # the delta rule's keys are unit vectors (else it diverges)
    per_head, per_channel = -torch.rand(1, length, 4, generator=g), -torch.rand(1, length, 4, 64, generator=g)
    beta, bonus = torch.rand(1, length, 4, generator=g), torch.randn(4, 64, generator=g)
    current = {}
    call = lambda name, *a: getattr(current["module"], name)(*a)  # noqa: E731
    scans = {
        f"linear_scan per-head {length}": lambda: call("linear_scan", q, k, v, per_head, None, 0.125, None,
                                                       DENORMALS.exp_floor),
        f"linear_scan per-channel {length}": lambda: call("linear_scan", q, k, v, per_channel, None, 0.125, None,
                                                          DENORMALS.exp_floor),
        f"linear_scan per-channel + bonus {length}": lambda: call("linear_scan", q, k, v, per_channel, bonus, 0.125,
                                                                  None, DENORMALS.exp_floor),
        f"delta_scan per-head {length}": lambda: call("delta_scan", q, k, v, beta, per_head, 0.125, None,
                                                      DENORMALS.delta_floor),
    }
    for name, fn in scans.items():  # the two builds agree before they are timed
        outputs = []
        for variant in ("old", "new"):
            current["module"] = variants[variant]
            outputs.append(fn())
        print(f"{name}: largest |old - new| output {(outputs[0][0] - outputs[1][0]).abs().max().item():.2e}")
    times = time_alternating(scans, variants, lambda m: current.update(module=m), args.rounds)
    for name in scans:
        print(summary(times, name))
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    models = {"floor": floor, **students}
    with torch.no_grad():
        for name, model in students.items():
            logits = []
            for variant in ("old", "new"):
                use_module(variants[variant])
                logits.append(model(ids).logits)
            print(f"{name} {length}: largest |old - new| logit {(logits[0] - logits[1]).abs().max().item():.2e}")
        calls = {name: functools.partial(model, ids) for name, model in models.items()}
        times = time_alternating(calls, variants, use_module, args.rounds)
    for name in students:
        print(f"{length} " + summary(times, name))
        for variant in ("old", "new"):
            ratios = sorted(a / b for a, b in zip(times[name, variant], times["floor", variant]))
            print(f"    {variant} × floor (per-round median) {ratios[len(ratios) // 2]:.3f}")
