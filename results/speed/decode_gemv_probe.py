"""One token's projection, x (1, 1, in) times a weight, as decode runs it: `F.linear` on nn.Linear's (out, in)
weight with that weight in the CPU's caches ("hot") or not ("cold": cycling through ~16 MB of distinct weights,
about the embedded model's size), `torch.mv`, and x @ Wᵀ with the transpose stored contiguous. µs per call,
median of 5 blocks of 300 calls.

    python results/speed/decode_gemv_probe.py            # 2 threads
    OMP_NUM_THREADS=1 THREADS=1 python results/speed/decode_gemv_probe.py
"""
import os
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("THREADS", "2")))


def median_us(fn, n=300):
    for _ in range(20):
        fn()
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        blocks.append((time.perf_counter() - start) / n * 1e6)
    return sorted(blocks)[2]


with torch.inference_mode():
    for fan_in, fan_out in [(256, 768), (256, 256), (768, 256), (256, 4096), (256, 1536)]:
        x = torch.randn(1, 1, fan_in)
        weights = [torch.randn(fan_out, fan_in) for _ in range(max(1, 16_000_000 // (fan_out * fan_in * 4)))]
        transposed = [w.t().contiguous() for w in weights]
        turn = [0]

        def cycled(fn):
            def call():
                turn[0] = (turn[0] + 1) % len(weights)
                return fn(turn[0])
            return call

        linear_cold = cycled(lambda i: F.linear(x, weights[i]))
        mv_cold = cycled(lambda i: torch.mv(weights[i], x.view(fan_in)))
        transposed_cold = cycled(lambda i: x.view(1, fan_in) @ transposed[i])
        print(f"{fan_in} -> {fan_out} ({len(weights)} weights): linear cold {median_us(linear_cold):.1f}, "
              f"hot {median_us(lambda: F.linear(x, weights[0])):.1f} | mv cold {median_us(mv_cold):.1f} | "
              f"x @ Wt cold {median_us(transposed_cold):.1f} µs")
