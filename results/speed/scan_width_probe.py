"""Probe (tried, not adopted): the prefill's token-by-token linear scan with 8- against 16-wide vectors, in one
process, alternating (the env var SCAN_WIDE read per call), medians of 8, B = 1, 4 heads of 64. Needs the tried
source: in a scratch clone at b10ef12, `git apply results/speed/scan_width_tried.diff`, then from that clone

    SRC=kernels/native python results/speed/scan_width_probe.py
"""
import os
from pathlib import Path

SRC = Path(os.environ["SRC"])
import os, sys, time, statistics, torch
from torch.utils.cpp_extension import load
torch.set_num_threads(2)
m = load("scanx_avx512", [str(SRC / "recurrent_step.cpp"), str(SRC / "sequence_forward.cpp")],
         extra_cflags=["-O3", "-fopenmp", "-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
         extra_ldflags=["-fopenmp"], verbose=False)
g = torch.Generator().manual_seed(0)
for T in (2048, 16384):
    B, H, K, V = 1, 4, 64, 64
    q, k, v = (torch.randn(B, T, H, K, generator=g) for _ in range(3))
    ld = -torch.rand(B, T, H, K, generator=g) * 2
    bonus = torch.randn(H, K, generator=g)
    res = {}
    outs = {}
    for case, (dec, bon) in {"rwkv(per-channel+bonus)": (ld, bonus), "per-head": (ld[..., 0], None)}.items():
        times = {"0": [], "1": []}
        for r in range(9):
            for w in ("0", "1"):
                os.environ["SCAN_WIDE"] = w
                s = time.perf_counter(); o, S = m.linear_scan(q, k, v, dec, bon, 0.125, None, -60.0); e = time.perf_counter() - s
                outs[w] = o
                if r: times[w].append(e * 1e3)
        diff = (outs["0"] - outs["1"]).abs().max().item()
        a, b = statistics.median(times["0"]), statistics.median(times["1"])
        print(f"T={T} {case}: vec8 {a:.2f} ms, vec16 {b:.2f} ms, ratio {a/b:.2f}, max|diff| {diff:.2e}", flush=True)
