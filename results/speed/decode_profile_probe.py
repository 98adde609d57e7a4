"""Decode at 1,024 tokens of context for the floor, the teacher and students in one process (fp32, batch 1, the
benchmark's embedded shapes): ms per token (32 tokens per call, 7 rounds, models in turn, each call warm-started
from the same cache as `bench.throughput` does), then a torch profile of 8 tokens per model with its top ops
by self time per token.

    python results/speed/decode_profile_probe.py floor,teacher,linear_attention,gated_deltanet,rwkv
"""
import collections
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.perf.throughput import _Decoder, build_floor, embedded_shape_teacher
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

torch.set_num_threads(2)
teacher = embedded_shape_teacher()
names = sys.argv[1].split(",")
models = {}
for name in names:
    if name == "teacher":
        models[name] = teacher
    elif name == "floor":
        models[name] = build_floor(teacher)
    else:
        models[name] = build_student(teacher, name, init="random", seed=0).eval()
context = 1024
ids = torch.randint(0, teacher.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
decoders = {}
with torch.inference_mode():
    for name, model in models.items():
        out = model(ids, use_cache=True)
        decoders[name] = _Decoder(model, getattr(out, _CACHE_FIELD), ids[:, -1:], 32)
    times = collections.defaultdict(list)
    for _ in range(7):
        for name, decoder in decoders.items():
            decoder.warm_restart()
            start = time.perf_counter()
            decoder()
            times[name].append((time.perf_counter() - start) / 32 * 1e3)
    for name in names:
        ts = sorted(times[name])
        print(f"{name}: {ts[len(ts) // 2]:.2f} ms/token (min {ts[0]:.2f})")
    for name, decoder in decoders.items():
        decoder.warm_restart()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decoder.run(8)
        events = prof.key_averages()
        print(f"== {name}: profiled self time {sum(e.self_cpu_time_total for e in events) / 8e3:.2f} ms/token")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:14]:
            print(f"   {e.key:48s} calls/token {e.count / 8:6.1f}  self ms/token {e.self_cpu_time_total / 8e3:.3f}")
