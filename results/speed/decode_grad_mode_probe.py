"""Decode under torch.no_grad() (as `bench.throughput` and transformers' `generate` decode) and under
torch.inference_mode(), for the teacher and students of one shape, in one process: every (model, mode) pair has its
own filled cache and they take turns (order reversed every round); ms per token after a 1,024-token prompt, 32
tokens a call, and each model's time over the teacher's in the same mode and round. Weights made outside either mode.

    python results/speed/decode_grad_mode_probe.py smollm2-135m gated_deltanet,mamba [rounds]
"""
import copy
import statistics
import sys
import time

import torch

from bench.perf.heap import set_steady
from bench.perf.throughput import _Decoder, shaped_teacher
from bench.provenance import header
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

shape, names = sys.argv[1], sys.argv[2].split(",")
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
print(header(), "| heap", set_steady(), "| shape", shape)
torch.set_num_threads(2)
teacher = shaped_teacher(shape)
models = {"teacher": teacher, **{name: build_student(teacher, name, init="random", seed=0).eval() for name in names}}
ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
decoders = {}
for (name, model), (mode, context) in ((m, c) for m in models.items() for c in modes.items()):
    with context():
        cache = getattr(model(ids, use_cache=True), _CACHE_FIELD)
        decoders[name, mode] = _Decoder(model, copy.deepcopy(cache), ids[:, -1:], 32)
times = {key: [] for key in decoders}
for r in range(rounds):
    for (name, mode), decoder in (list(decoders.items()) if r % 2 == 0 else list(decoders.items())[::-1]):
        with modes[mode]():
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[name, mode].append((time.perf_counter() - start) / 32)
for mode in modes:
    line = []
    for name in models:
        ratio = statistics.median(a / b for a, b in zip(times[name, mode], times["teacher", mode]))
        line.append(f"{name} {1e3 * statistics.median(times[name, mode]):.2f} ms" + ("" if name == "teacher" else f" ({ratio:.3f}x)"))
    print(f"{mode:15s}", ", ".join(line))
