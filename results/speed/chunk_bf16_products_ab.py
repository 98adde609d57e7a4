"""Probe (tried, not adopted): the linear recurrence's chunk form with its four batched products on bf16 operands
against fp32 ones, forward and backward of one layer at the training shape (batch 8 x 512 tokens, 4 heads of 64),
in one process, alternating, medians of 6 after 2 warm-ups. Needs the tried change: at 8271b10,
`git apply results/speed/chunk_bf16_products_tried.diff` (it adds `matmul_dtype` to `linear_recurrence_chunk`).

    python results/speed/chunk_bf16_products_ab.py
"""
import time, statistics, torch
from kernels.linear_recurrence.chunk import linear_recurrence_chunk
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
B,T,H,K,V = 8,512,4,64,64
def inputs(kind):
    q, k, v = (torch.randn(B, T, H, K, generator=g, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    if kind == "retnet":
        ld = torch.log1p(-(2.0 ** (-5.0 - torch.arange(H).float()))).expand(B, T, H)
        return (q, k, v, ld, None)
    ld = (-torch.rand(B, T, H, K, generator=g) * 0.5).requires_grad_()
    return (q, k, v, ld, None if kind == "gla" else torch.randn(H, K, generator=g).requires_grad_())
for kind in ("retnet", "gla", "rwkv"):
    args = inputs(kind)
    res = {torch.float32: ([], []), torch.bfloat16: ([], [])}
    for i in range(8):
        for dt in res:
            s = time.perf_counter(); o, _ = linear_recurrence_chunk(*args, matmul_dtype=dt); t1 = time.perf_counter()
            o.float().sum().backward(); t2 = time.perf_counter()
            if i >= 2: res[dt][0].append(t1 - s); res[dt][1].append(t2 - t1)
            for a in args:
                if torch.is_tensor(a) and a.grad is not None: a.grad = None
    print(kind, "  ".join(f"{str(dt)[6:]} fwd {1e3*statistics.median(f):.1f} bwd {1e3*statistics.median(b):.1f}" for dt, (f, b) in res.items()))
