"""One layer's featurize for a decoded token (T = 1, a filled conv cache), the short convolution through the torch
step (the gate before 602997e: prompts only) against the compiled pass (the tree's), alternating in one process,
medians over 3,800 calls; then the compiled call alone and torch's copy of a (C, k) weight's transpose, which the
pass made before 602997e for every call, at gated_deltanet's conv width of each shape.

    python results/speed/short_conv_step_probe.py embedded|smollm2-135m
"""
import statistics
import sys
import time

import torch

import students.layers as layers
from bench.perf.throughput import shaped_teacher
from bench.provenance import header
from kernels import native
from students.surgery import build_student

shape = sys.argv[1]
print(header(), "| shape", shape)
torch.set_num_threads(2)
teacher = shaped_teacher(shape)
compiled_gate = layers._compiled_short_conv


def torch_gate(x, *args, **kwargs):  # before 602997e a decoded token took the torch step
    return None if x.shape[1] == 1 else compiled_gate(x, *args, **kwargs)


def per_call_us(fn, n=5000):
    for _ in range(200):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e6 * (time.perf_counter() - start) / n


D = teacher.config.hidden_size
with torch.inference_mode():
    for name in ("mamba", "metala", "gated_deltanet"):
        mixer = build_student(teacher, name, init="random", seed=0).eval().model.layers[0].mixer
        state = dict(mixer.featurize(torch.randn(1, 8, D), {}).carry)
        x1 = torch.randn(1, 1, D)
        times = {"torch step": [], "compiled pass": []}
        for _ in range(4000):
            for side, gate in (("torch step", torch_gate), ("compiled pass", compiled_gate)):
                layers._compiled_short_conv = gate
                start = time.perf_counter()
                mixer.featurize(x1, state)
                times[side].append(time.perf_counter() - start)
        layers._compiled_short_conv = compiled_gate
        print(f"{name}: featurize at T = 1, " + ", ".join(f"{side} {1e6 * statistics.median(t[200:]):.1f} us"
                                                        for side, t in times.items()))
    C = 3 * teacher.config.num_attention_heads * teacher.config.head_dim  # gated_deltanet's q, k, v channels
    x, w, cache = torch.randn(1, 1, C), torch.randn(C, 4), torch.randn(1, 3, C)
    module = native.module()
    print(f"C = {C}: the compiled call {per_call_us(lambda: module.short_conv(x, w, None, True, cache, 0, 0)):.2f} us, "
          f"torch's w.t().contiguous() {per_call_us(lambda: w.t().contiguous()):.2f} us")
