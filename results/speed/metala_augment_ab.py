"""A/B in one process: MetaLA's self-augmentation inside the read-out norm's compiled pass (new) against the torch
expression before the compiled norm (old, the code at 807a8e8), alternating per round with the floor timed in the
same rounds (fp32, batch 1, no_grad, the embedded teacher's shape); then decode after 1,024 tokens the same way.

    python results/speed/metala_augment_ab.py [--rounds 15] [--lengths 2048,16384] [--decode-rounds 15]
"""
import argparse
import functools
import statistics

import torch

import students.layers as layers
from bench.data.teacher import EMBEDDED_TEACHER
from bench.perf.throughput import _Decoder, build_floor
from decode_ab import ratio_summary, time_alternating as time_decode  # beside this file
from kernels.head_norm import head_norm
from native_revision import summary, time_alternating
from students.modeling import _CACHE_FIELD
from students.surgery import build_student, load_teacher

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=15)
parser.add_argument("--lengths", default="2048,16384")
parser.add_argument("--decode-rounds", type=int, default=15)
args = parser.parse_args()
torch.set_num_threads(2)


def augmentation_first(x, *a, augment=None, **k):  # the code before: the augmented term in torch, then the norm
    if augment is not None:
        q, k_, v, w = augment
        x = x + torch.sigmoid((q.float() * w * k_).sum(-1, keepdim=True) * v.float())
    return head_norm(x, *a, **k)


variants = {"old": augmentation_first, "new": head_norm}


def use(fn):
    layers.head_norm = fn


teacher = load_teacher(str(EMBEDDED_TEACHER))
floor = build_floor(teacher)
student = build_student(teacher, "metala", init="random", seed=0).eval()
with torch.no_grad():  # w_aug starts at zero, where both forms add exactly 0.5: live values make the logits comparable
    for module in student.modules():
        if hasattr(module, "aug_balance"):
            module.aug_balance.normal_(generator=torch.Generator().manual_seed(1))
for length in [int(n) for n in args.lengths.split(",") if n]:
    ids = torch.randint(0, 4096, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = []
        for fn in variants.values():
            use(fn)
            logits.append(student(ids).logits)
        print(f"metala {length}: largest |old - new| logit {(logits[0] - logits[1]).abs().max().item():.2e}")
        times = time_alternating({"floor": functools.partial(floor, ids), "metala": functools.partial(student, ids)},
                                 variants, use, args.rounds)
    print(f"{length} floor: " + summary(times, "floor").split(": ", 1)[1])
    print(f"{length} " + summary(times, "metala"))
    for variant in variants:
        ratios = sorted(a / b for a, b in zip(times["metala", variant], times["floor", variant]))
        print(f"    {variant} × floor (per-round median) {ratios[len(ratios) // 2]:.3f}")
ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    decoders = {name: _Decoder(m, getattr(m(ids, use_cache=True), _CACHE_FIELD), ids[:, -1:], 32)
                for name, m in {"teacher": teacher, "metala": student}.items()}
    times = time_decode(decoders, lambda mode: use(variants[mode]), args.decode_rounds)
for name in decoders:
    old, new = times[name, "old"], times[name, "new"]
    print(f"decode after 1,024 tokens, ms/token: {name} old {statistics.median(old):.3f} new "
          f"{statistics.median(new):.3f} {ratio_summary(old, new)}")
