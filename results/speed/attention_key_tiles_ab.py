"""A/B: the compiled causal attention with its two products tiled over keys (256 at a time, `ATTENTION_KEY_TILE`)
against `base`'s untiled products, and torch's sdpa, the three alternating call by call in one process; fp32 and
bf16 inputs in transformers' layout (4 query and 2 key-value heads of 64), per-round ratios' medians and quartiles.
Outputs compared bit for bit first.

    python results/speed/attention_key_tiles_ab.py [base] [rounds]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from native_variant import build_native

from bench.provenance import header

base = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
print(header(), "| base", base)
torch.set_num_threads(2)
old, new = build_native("attention_untiled", base), build_native("attention_tiled", None)
for dtype in (torch.float32, torch.bfloat16):
    for B, T in [(8, 512), (2, 2048), (1, 4096), (1, 8192), (1, 16384)]:
        if dtype == torch.bfloat16 and T > 8192:
            continue
        q = torch.randn(B, T, 4, 64).transpose(1, 2).to(dtype)
        k, v = (torch.randn(B, T, 2, 64).transpose(1, 2).to(dtype) for _ in range(2))
        calls = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                 "untiled": lambda: old.causal_attention(q, k, v, 0.125),
                 "tiled": lambda: new.causal_attention(q, k, v, 0.125)}
        assert torch.equal(calls["untiled"](), calls["tiled"]()), "outputs differ"
        times = {key: [] for key in calls}
        n = rounds if T <= 4096 else max(3, rounds // 3)
        for _ in range(n):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        speedup = [u / t for u, t in zip(times["untiled"], times["tiled"])]
        vs_sdpa = [s / t for s, t in zip(times["sdpa"], times["tiled"])]
        quartiles = statistics.quantiles(speedup, n=4) if n >= 4 else (min(speedup), 0, max(speedup))
        print(f"{str(dtype)[6:]:9s} B={B} T={T:6d}: sdpa {1e3 * statistics.median(times['sdpa']):8.1f} ms, "
              f"untiled {1e3 * statistics.median(times['untiled']):8.1f}, tiled {1e3 * statistics.median(times['tiled']):8.1f}"
              f" | tiled vs untiled {statistics.median(speedup):.2f}x ({quartiles[0]:.2f}-{quartiles[2]:.2f}),"
              f" vs sdpa {statistics.median(vs_sdpa):.2f}x", flush=True)
