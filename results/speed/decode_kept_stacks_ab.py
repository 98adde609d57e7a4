"""Decode per token with the stacked projection weights rebuilt at every timed call (each call its own
`kept_weight_stacks` scope, as bench.throughput timed decode up to this probe) against one scope held across the
warm-up and timed calls (as `StudentForCausalLM.generate` holds one over a whole generation), in one process,
rounds alternating, at SmolLM2-135M's shape (30 layers, width 576), context 1,024, 32 tokens a call, steady heap.
    python results/speed/decode_kept_stacks_ab.py [students] [rounds]"""
import statistics, sys, time

import torch

from bench.perf.heap import set_steady
from bench.perf.throughput import _Decoder, shaped_teacher
from bench.provenance import header
from students.layers import kept_weight_stacks
from students.surgery import build_student

names = (sys.argv[1] if len(sys.argv) > 1 else "teacher,gated_deltanet,mamba,linear_attention").split(",")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
print(header(), "| heap", set_steady())
torch.set_num_threads(2)
teacher = shaped_teacher("smollm2-135m")
models = {name: teacher if name == "teacher" else build_student(teacher, name, init="random", seed=0).eval()
          for name in names}
ids = torch.randint(0, 49152, (1, 1024), generator=torch.Generator().manual_seed(0))
times = {(name, side): [] for name in names for side in ("per_call", "held")}
with torch.no_grad():
    decoders = {}
    for name, model in models.items():
        out = model(ids, use_cache=True)
        decoders[name] = _Decoder(model, out.past_key_values, out.logits[:, -1:].argmax(-1), 32)
    for r in range(rounds):
        for side in ("per_call", "held") if r % 2 == 0 else ("held", "per_call"):
            with kept_weight_stacks() if side == "held" else torch.no_grad():
                for name, decoder in decoders.items():
                    decoder.warm_restart()
                    start = time.perf_counter()
                    decoder()
                    times[name, side].append(1e3 * (time.perf_counter() - start) / 32)
for name in names:
    per_call, held = (statistics.median(times[name, side]) for side in ("per_call", "held"))
    ratio = statistics.median(a / b for a, b in zip(times[name, "per_call"], times[name, "held"]))
    print(f"{name:17s} ms/token: stacks rebuilt each call {per_call:6.2f}, held {held:6.2f}; "
          f"per-round ratio {ratio:.3f}")
for side in ("per_call", "held"):
    print(f"{side}: " + ", ".join(f"{n} / teacher {statistics.median(a / b for a, b in zip(times[n, side], times['teacher', side])):.3f}"
                                  for n in names if n != "teacher"))
