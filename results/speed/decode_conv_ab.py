"""Decode with the short convolution's decoded token through the compiled pass (the working tree: the pass takes
T = 1, transposes its taps itself and returns the next cache) against the torch step it took before (BASE_COMMIT's
`_compiled_short_conv`, prompts only, copied here, and BASE_COMMIT's extension), in one process: ms per token after a 1,024-token prompt, 32 tokens a
call, the sides alternating by round (order swapped each round), the teacher timed in the same rounds; per-round
old / new medians and quartiles. Students with short convolutions: mamba, gated_deltanet, metala.

    python results/speed/decode_conv_ab.py BASE_COMMIT embedded|smollm2-135m STUDENTS [rounds]
"""
import statistics
import sys
import time

import torch
from native_variant import build_native

import kernels.native as native
import students.layers as layers
from bench.perf.heap import set_steady
from bench.perf.throughput import _Decoder, shaped_teacher
from bench.provenance import header
from students.modeling import _CACHE_FIELD
from students.surgery import build_student

base_commit, shape, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 15
print(header(), "| heap", set_steady(), "| shape", shape)
torch.set_num_threads(2)
base_extension = build_native(f"conv_base_{base_commit}", base_commit)
new_extension = native.module()
new_gate = layers._compiled_short_conv


def old_gate(x, weight, bias, silu, cache, normalized=0, group=0):  # BASE_COMMIT's (6a75017): prompts only
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    compiled = native.without_autograd(x, weight, bias, cache) if x.shape[1] > 1 and x.dtype == torch.float32 else None
    if compiled is None:
        return None
    return (compiled.short_conv(x, weight, bias, silu, cache, normalized, group),
            layers._last_inputs(x, cache, weight.shape[1]))


def use(side):
    layers._compiled_short_conv = old_gate if side == "old" else new_gate
    native._state["module"] = base_extension if side == "old" else new_extension


teacher = shaped_teacher(shape)
ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
students = {name: build_student(teacher, name, init="random", seed=0).eval() for name in names}  # weights made outside
with torch.inference_mode():
    out = teacher(ids, use_cache=True)
    teacher_decoder = _Decoder(teacher, out.past_key_values, ids[:, -1:], 32)
    for name, model in students.items():
        decoders, tokens = {}, {}
        for side in ("old", "new"):
            use(side)
            out = model(ids, use_cache=True)
            decoders[side] = _Decoder(model, getattr(out, _CACHE_FIELD), ids[:, -1:], 32)
            decoders[side].restart()
            decoders[side].run(16)
            tokens[side] = decoders[side].token
        print(f"{name}: the 16th decoded token the same either side: {bool(torch.equal(tokens['old'], tokens['new']))}")
        times = {"old": [], "new": [], "teacher": []}
        for r in range(rounds):
            order = ("old", "new", "teacher") if r % 2 == 0 else ("teacher", "new", "old")
            for side in order:
                decoder = teacher_decoder if side == "teacher" else decoders[side]
                if side != "teacher":
                    use(side)
                decoder.warm_restart()
                start = time.perf_counter()
                decoder()
                times[side].append((time.perf_counter() - start) / 32)
        ratios = [o / n for o, n in zip(times["old"], times["new"])]
        q = statistics.quantiles(ratios, n=4)
        print(f"  {name} ms/token: old {1e3 * statistics.median(times['old']):.3f}, new {1e3 * statistics.median(times['new']):.3f}, "
              f"teacher {1e3 * statistics.median(times['teacher']):.3f}; old / new per round {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f}); new / teacher "
              f"{statistics.median(n / t for n, t in zip(times['new'], times['teacher'])):.3f}, old / teacher "
              f"{statistics.median(o / t for o, t in zip(times['old'], times['teacher'])):.3f}")
use("new")
