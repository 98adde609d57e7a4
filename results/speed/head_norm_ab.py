"""A/B in one process: the mixers' read-out norm and gate as one compiled pass (`kernels.head_norm`, native, new)
against its torch form (old), alternating per round; the operator alone at the embedded shape (4 heads of 64,
the gate a strided view as gated_deltanet's), then whole models (fp32, batch 1, no_grad) with the floor timed in the
same rounds.

    python results/speed/head_norm_ab.py [--rounds 7] [--lengths 2048,16384] [--students mamba,gla,...]
                                         [--decode-rounds 15]

Then decode after 1,024 tokens, ms per token, the two variants alternating (`decode_ab.py`).
"""
import argparse
import functools
import statistics

import torch

import students.layers as layers
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder, build_floor
from kernels.head_norm import head_norm
from decode_ab import ratio_summary, time_alternating as time_decode  # beside this file
from native_revision import summary, time_alternating
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=7)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--students", default="mamba,rwkv,retnet,gla,xlstm,metala,gated_deltanet")
parser.add_argument("--decode-rounds", type=int, default=15)
args = parser.parse_args()
torch.set_num_threads(2)
variants = {"old": "torch", "new": "native"}


def use(backend):
    layers.head_norm = functools.partial(head_norm, backend=backend)


teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher)
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in args.students.split(",")}
for length in [int(n) for n in args.lengths.split(",") if n]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, length, 4, 64, generator=g)
    gate = torch.randn(1, length, 4 * 64 * 3, generator=g)[..., 256:512].reshape(1, length, 4, 64)
    weight, bias = torch.randn(64, generator=g), torch.randn(64, generator=g)
    ops = {f"rms + silu {length}": dict(kind="rms", activation="silu"),
           f"layer + silu {length}": dict(kind="layer", activation="silu", bias=bias),
           f"layer + sigmoid {length}": dict(kind="layer", activation="sigmoid", bias=bias)}
    with torch.no_grad():
        calls = {}
        for name, options in ops.items():
            fn = functools.partial(lambda o: layers.head_norm(x, weight, gate=gate, **o), options)
            calls[name] = fn
            outputs = []
            for variant in variants.values():
                use(variant)
                outputs.append(fn())
            print(f"{name}: largest |old - new| {(outputs[0] - outputs[1]).abs().max().item():.2e}")
        times = time_alternating(calls, variants, use, 15)
        for name in calls:
            print(summary(times, name))
        ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
        for name, model in students.items():
            logits = []
            for variant in variants.values():
                use(variant)
                logits.append(model(ids).logits)
            print(f"{name} {length}: largest |old - new| logit {(logits[0] - logits[1]).abs().max().item():.2e}")
        models = {"floor": floor, **students}
        times = time_alternating({name: functools.partial(m, ids) for name, m in models.items()}, variants, use,
                                 args.rounds)
    for name in students:
        print(f"{length} " + summary(times, name))
        for variant in variants:
            ratios = sorted(a / b for a, b in zip(times[name, variant], times["floor", variant]))
            print(f"    {variant} × floor (per-round median) {ratios[len(ratios) // 2]:.3f}")

ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    decoders = {name: _Decoder(m, getattr(m(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
                for name, m in {"teacher": teacher, **students}.items()}
    times = time_decode(decoders, lambda mode: use(variants[mode]), args.decode_rounds)
for name in decoders:
    old, new = times[name, "old"], times[name, "new"]
    print(f"decode after 1,024 tokens, ms/token: {name} old {statistics.median(old):.3f} new "
          f"{statistics.median(new):.3f} {ratio_summary(old, new)}")
