"""The attention op of a training step (forward and backward, B = 8, T = 512, 4 query heads, 2 KV heads of 64,
causal) with keys and values expanded to every query head (the attention mixer's training form) against sdpa's
`enable_gqa`, fp32 and bf16: whether values and gradients match bit for bit, and medians of 10 calls.

    python results/speed/gqa_training_probe.py
"""
import statistics

import torch
import torch.nn.functional as F
from ab_rounds import timed

from bench.provenance import header

print(header())
torch.set_num_threads(2)
B, T, H, G, D = 8, 512, 4, 2, 64
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    q0, k0, v0 = (torch.randn(B, heads, T, D, generator=g).to(dtype) for heads in (H, G, G))
    upstream = torch.randn(B, H, T, D, generator=g)

    def step(grouped):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        if grouped:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1),
                                               is_causal=True)
        (o.float() * upstream).sum().backward()
        return o, q.grad, k.grad, v.grad

    pairs = list(zip(step(False), step(True)))
    print(f"{dtype}: o, dq, dk, dv identical {[torch.equal(a, b) for a, b in pairs]}, max |difference| "
          f"{[float((a.detach().float() - b.detach().float()).abs().max()) for a, b in pairs]}")
    for grouped in (False, True, False, True):
        times = [timed(step, grouped) for _ in range(12)]
        print(f"  {'enable_gqa' if grouped else 'expanded':10} {1e3 * statistics.median(times[2:]):.2f} ms")
