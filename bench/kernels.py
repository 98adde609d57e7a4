"""Kernel benchmark: chunked backends vs the naive loop, side by side in one run.

    python -m bench.kernels [--lengths 512,2048,8192] [--heads 4] [--dim 64] [--json FILE]

Prints forward and forward+backward time, the speed-up over `naive`, and achieved GFLOP/s counted
from the chunked algorithm's nominal matmul work (per head and token: 2·C·K + 2·C·V intra-chunk, 4·K·V
for the state; the delta rule adds its k kᵀ, triangular solve and K×K transitions; backward counted as
2× forward). A speed-up is only printed for a backend whose
correctness tests pass on this configuration (checked here against the naive output first).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from bench.env import header, machine, time_call
from kernels import delta_rule, linear_recurrence
from kernels.linear_recurrence.chunk import CHUNK


def _inputs(op: str, decay: str, T: int, H: int, K: int, grad: bool):
    torch.manual_seed(0)
    q, k, v = torch.randn(1, T, H, K), torch.randn(1, T, H, K), torch.randn(1, T, H, K)
    args = dict(q=q, k=F.normalize(k, dim=-1) if op == "delta_rule" else k, v=v)
    if op == "delta_rule":
        args["beta"] = torch.rand(1, T, H)
    if decay == "head":
        args["log_decay"] = F.logsigmoid(torch.randn(1, T, H) + 3)
    elif decay == "channel":
        args["log_decay"] = -torch.exp(torch.randn(1, T, H, K))
    return {n: t.requires_grad_(grad) for n, t in args.items()}


def _flops(op: str, T: int, H: int, K: int) -> float:
    """Nominal matmul work of the chunked algorithm (K = V), per the module docstring."""
    C = CHUNK
    per_token = 2 * C * K + 2 * C * K + 4 * K * K  # q kᵀ, scores v, q S, kᵀ v
    if op == "delta_rule":  # + k kᵀ, triangular solve, attn w, transition and its state product
        per_token += 2 * C * K + C * 2 * K + 2 * C * K + 2 * K * K + 2 * K * K
    return H * T * per_token


def bench_case(op: str, decay: str, T: int, H: int, K: int, repeats: int) -> dict:
    fn = linear_recurrence if op == "linear_recurrence" else delta_rule
    row = {"op": op, "decay": decay, "T": T, "H": H, "K": K, "V": K}
    outputs = {}
    for backend in ("naive", "chunk"):
        args = _inputs(op, decay, T, H, K, grad=False)
        with torch.no_grad():
            outputs[backend] = fn(**args, backend=backend)[0]
            fwd = time_call(lambda: fn(**args, backend=backend), repeats=repeats if backend == "chunk" else 1)
        grad_args = _inputs(op, decay, T, H, K, grad=True)

        def fwd_bwd():
            fn(**grad_args, backend=backend)[0].sum().backward()

        fb = time_call(fwd_bwd, repeats=repeats if backend == "chunk" else 1, warmup=1 if backend == "chunk" else 0)
        row[f"{backend}_fwd_s"], row[f"{backend}_fwdbwd_s"] = fwd["median_s"], fb["median_s"]
        row[f"{backend}_fwd_spread_s"] = [fwd["min_s"], fwd["max_s"]]
    err = (outputs["chunk"] - outputs["naive"]).abs().max().item() / max(outputs["naive"].abs().max().item(), 1.0)
    row["chunk_rel_err"] = err
    row["correct"] = err < 1e-4
    flops = _flops(op, T, H, K)
    row["chunk_fwd_gflops"] = flops / row["chunk_fwd_s"] / 1e9
    row["chunk_fwdbwd_gflops"] = 3 * flops / row["chunk_fwdbwd_s"] / 1e9
    row["speedup_fwd"] = row["naive_fwd_s"] / row["chunk_fwd_s"] if row["correct"] else None
    row["speedup_fwdbwd"] = row["naive_fwdbwd_s"] / row["chunk_fwdbwd_s"] if row["correct"] else None
    return row


def matmul_gflops(n: int = 1024) -> float:
    """This machine's fp32 matmul throughput, measured now, as the yardstick for the kernels."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_call(lambda: a @ b, repeats=5)["median_s"]
    return 2 * n ** 3 / t / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="K = V per head")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="linear_recurrence:head,linear_recurrence:channel,delta_rule:head")
    parser.add_argument("--json", help="also write the rows (with the machine header) to this file")
    args = parser.parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        cases = [tuple(c.split(":")) for c in args.cases.split(",")]
        if any(t <= 0 for t in lengths) or any(len(c) != 2 for c in cases):
            raise ValueError
    except ValueError:
        print("error: --lengths must be positive integers like 512,2048 and --cases like op:decay,...", file=sys.stderr)
        return 2
    print(header())
    peak = matmul_gflops()
    print(f"fp32 matmul yardstick: {peak:.1f} GFLOP/s")
    print(f"{'op':18} {'decay':8} {'T':>6} {'naive fwd':>10} {'chunk fwd':>10} {'x':>6} {'naive f+b':>10} "
          f"{'chunk f+b':>10} {'x':>6} {'GF/s fwd':>9} {'% peak':>7} {'GF/s f+b':>9}")
    rows = []
    for op, decay in cases:
        for T in lengths:
            r = bench_case(op, decay, T, args.heads, args.dim, args.repeats)
            rows.append(r)
            sx = lambda s: f"{s:6.1f}" if s is not None else "  FAIL"
            print(f"{op:18} {decay:8} {T:>6} {r['naive_fwd_s']:>10.4f} {r['chunk_fwd_s']:>10.4f} {sx(r['speedup_fwd'])} "
                  f"{r['naive_fwdbwd_s']:>10.4f} {r['chunk_fwdbwd_s']:>10.4f} {sx(r['speedup_fwdbwd'])} "
                  f"{r['chunk_fwd_gflops']:>9.1f} {100 * r['chunk_fwd_gflops'] / peak:>6.0f}% {r['chunk_fwdbwd_gflops']:>9.1f}",
                  flush=True)
    if args.json:
        from bench.io import atomic_write_json
        atomic_write_json(args.json, {"machine": machine(), "matmul_gflops": peak, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
