"""One attention layer's decoded token at the embedded shape (4 query heads, 2 KV heads of 64) after S cached tokens,
alone: the cache (B, S, kv heads, K) appended to and expanded to every query head for sdpa (the attention mixer before
2288a11), the same appended cache read with sdpa's `enable_gqa`, and the teacher's layout (B, kv heads, S, K)
appended along S and read in place; every form's output checked against the first; medians of 25.

    python results/speed/attention_cache_layer_probe.py
"""
import statistics

import torch
import torch.nn.functional as F
from ab_rounds import timed

from bench.perf.heap import set_steady
from bench.provenance import header

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
B, G, H, D = 1, 2, 4, 64
for S in (1024, 32768):
    kc, vc = torch.randn(B, S, G, D), torch.randn(B, S, G, D)
    q, k1, v1 = torch.randn(B, 1, H, D), torch.randn(B, 1, G, D), torch.randn(B, 1, G, D)
    kt, vt = kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous()

    def expanded():
        k, v = torch.cat([kc, k1], 1), torch.cat([vc, v1], 1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
                                              v.repeat_interleave(2, 2).transpose(1, 2))

    def grouped():
        k, v = torch.cat([kc, k1], 1), torch.cat([vc, v1], 1)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), enable_gqa=True)

    def head_major():
        k, v = torch.cat([kt, k1.transpose(1, 2)], 2), torch.cat([vt, v1.transpose(1, 2)], 2)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, enable_gqa=True)

    reference = expanded()
    for name, form in (("expanded", expanded), ("grouped", grouped), ("head-major", head_major)):
        assert torch.allclose(form(), reference, atol=1e-5), name
        print(f"  S = {S}: {name:10} {1e3 * statistics.median(timed(form) for _ in range(30)):.3f} ms a layer")
