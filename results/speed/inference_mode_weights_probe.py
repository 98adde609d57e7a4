"""Decode of one student built two ways in one process: its weights made outside inference mode (as
`bench.throughput` builds models) and made inside `torch.inference_mode()` (inference tensors, which have no version
counter), both decoding under inference mode, taking turns; ms per token after a 1,024-token prompt, 32 tokens a call.

    python results/speed/inference_mode_weights_probe.py gated_deltanet smollm2-135m [rounds]
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

name, shape = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
print(header(), "| heap", set_steady(), "| shape", shape)
torch.set_num_threads(2)
teacher = shaped_teacher(shape)
ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
models = {"weights made outside": build_student(teacher, name, init="random", seed=0).eval()}
with torch.inference_mode():
    models["weights made in inference mode"] = build_student(teacher, name, init="random", seed=0).eval()
decoders = {}
with torch.inference_mode():
    for side, model in models.items():
        decoders[side] = _Decoder(model, copy.deepcopy(getattr(model(ids, use_cache=True), _CACHE_FIELD)),
                                  ids[:, -1:], 32)
    times = {side: [] for side in decoders}
    for r in range(rounds):
        for side, decoder in (list(decoders.items()) if r % 2 == 0 else list(decoders.items())[::-1]):
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[side].append((time.perf_counter() - start) / 32)
ratios = [b / a for a, b in zip(*times.values())]
print(f"{name}: " + ", ".join(f"{side} {1e3 * statistics.median(t):.2f} ms/token" for side, t in times.items())
      + f"; per round, in inference mode / outside: {statistics.median(ratios):.3f}")
