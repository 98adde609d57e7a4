"""Probe: does a longer timed decode call make the per-round decode ratios less noisy? The floor, mamba and the
teacher decode from 1k and 16k tokens of context, 32 tokens a call (the benchmark's) or 128, every call after the
benchmark's warm restart (`_Decoder.warm_restart`), all twelve decoders taking turns for 11 rounds; per decoder the
median ms/token and its interquartile range over the median, and the median and interquartile range of the per-round
16k / 1k ratio (the flatness target's). Steady heap, 2 threads, fp32.

    python results/speed/decode_steps_noise_probe.py
"""
import copy
import statistics
import time

import torch

from bench.perf.heap import set_steady
from bench.provenance import header

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
from bench.perf.throughput import _Decoder, build_floor, embedded_shape_teacher  # noqa: E402
from students.surgery import build_student  # noqa: E402

teacher = embedded_shape_teacher()
models = {"floor": build_floor(teacher), "mamba": build_student(teacher, "mamba", init="random", seed=0).eval(),
          "teacher": teacher.eval()}
token = torch.randint(0, 4096, (1, 1))
decoders = {}
with torch.no_grad():
    for name, model in models.items():
        for context in (1024, 16384):
            cache, seen = None, 0
            while seen < context:
                n = min(2048, context - seen)
                cache = model(torch.randint(0, 4096, (1, n)), use_cache=True, past_key_values=cache).past_key_values
                seen += n
            for steps in (32, 128):
                decoders[name, context, steps] = _Decoder(model, copy.deepcopy(cache), token, steps)
    times = {key: [] for key in decoders}
    for _ in range(11):
        for key, decoder in decoders.items():
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[key].append((time.perf_counter() - start) / key[2] * 1e3)
for name in models:
    for steps in (32, 128):
        short, long = times[name, 1024, steps], times[name, 16384, steps]
        q = statistics.quantiles([b / a for a, b in zip(short, long)], n=4, method="inclusive")
        qs = statistics.quantiles(short, n=4, method="inclusive")
        print(f"{name:8s} {steps:3d} tokens a call: ms/token at 1k {statistics.median(short):.2f} (interquartile range "
              f"/ median {(qs[2] - qs[0]) / qs[1]:.2f}); 16k / 1k per round: median {q[1]:.3f}, interquartile range "
              f"{q[2] - q[0]:.3f}")
