"""The two numbers behind rwkv's margin to 1.3x the floor (speed_probes_2026-12-07.md, forty-third stop): this
machine's fp32 product rate at the prefill's shapes (torch.mm, 2 threads, 20 calls after 3) and the product FLOPs of
a 2,048-token prefill of the floor and of rwkv at the embedded shape, counted by FlopCounterMode with the compiled
passes on (what the prefill runs; the token shift's pass hides its products, added here from their shapes).

    python results/speed/rwkv_product_bound_probe.py
"""
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.mixers.rwkv import DECAY_RANK, MIX_RANK
from students.surgery import build_student

print(header())
torch.set_num_threads(2)
for m, k, n in [(2048, 256, 256), (2048, 256, 768), (2048, 768, 256), (2048, 256, 4096), (2048, 2048, 2048)]:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    print(f"mm {m} x {k} x {n}: {2 * m * k * n * 20 / (time.perf_counter() - start) / 1e9:.0f} GFLOP/s")
teacher = embedded_shape_teacher()
T, D, L = 2048, teacher.config.hidden_size, teacher.config.num_hidden_layers
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
counted = {}
with torch.no_grad():
    for name in ("floor", "rwkv"):
        model = (build_floor(teacher) if name == "floor" else build_student(teacher, name, init="random", seed=0)).eval()
        with FlopCounterMode(display=False) as counter:
            model(ids, use_cache=False)
        counted[name] = counter.get_total_flops()
# the token shift's pass: x W1 (D x 5R), five R x D products, the decay's D x Rd and Rd x D, per token and layer
hidden = 2 * T * L * (D * 5 * MIX_RANK + 5 * MIX_RANK * D + 2 * D * DECAY_RANK)
print(f"prefill of {T} tokens, product GFLOP: floor {counted['floor'] / 1e9:.2f}; rwkv {counted['rwkv'] / 1e9:.2f} counted "
      f"+ {hidden / 1e9:.2f} in the token shift's pass = {(counted['rwkv'] + hidden) / 1e9:.2f} "
      f"({(counted['rwkv'] + hidden) / counted['floor']:.3f}x the floor's)")
