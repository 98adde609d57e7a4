"""Kernel benchmark: every backend of the recurrences side by side in one run, plus the fused losses.

    python -m bench.perf.kernel_bench [--suite recurrence|distill_loss|mixer_loss|fused_ops|all]
                            [--lengths 512,2048,8192]
                            [--batch 1] [--heads 4] [--dim 64] [--dtype fp32|bf16] [--backends ...] [--json FILE]

Recurrences: forward and forward+backward time of each backend (CPU default: naive, chunk, native; CUDA default:
chunk (torch), triton (ours), fla (flash-linear-attention, when installed)), the speed-up over the
baseline (naive on CPU, the torch chunk form on CUDA) and achieved GFLOP/s counted from the chunked
algorithm's nominal matmul work (per head and token: 2·C·K + 2·C·V intra-chunk, 4·K·V for the state,
C = 64 whichever form or chunk size the torch chunk backend takes;
the delta rule adds its k kᵀ, triangular solve and K×K transitions; backward counted as 2× forward).
Before any timing each backend is checked against the fp32 loop on the same configuration (at most
CHECK_LENGTH tokens, fp32, outputs and all gradients); a speed-up is only printed for a backend that
passes. `native` (compiled, forward only) is checked forward without a gradient to record, where it runs; with
one it runs `chunk`, so its forward+backward column is chunk's. The other suites live in
`bench.perf.distill_loss_bench`, `bench.perf.mixer_loss_bench` and `bench.perf.fused_ops_bench` (CPU only).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time

import torch
import torch.nn.functional as F

from bench.perf.timing import time_call
from bench.provenance import header, machine
from kernels import delta_rule, linear_recurrence
from kernels.chunking import CHUNK
from kernels.delta_rule import BACKENDS as DELTA_BACKENDS
from kernels.delta_rule.chunk import chunk_size_for as delta_chunk_size
from kernels.linear_recurrence import BACKENDS as LR_BACKENDS
from kernels.linear_recurrence.chunk import chunk_forms

CHECK_LENGTH = 256
CASES = ("linear_recurrence:head,linear_recurrence:channel,linear_recurrence:channel_edge,"
         "linear_recurrence:channel_strong,linear_recurrence:bonus,delta_rule:head,delta_rule:head_strong")
DECAYS = ("none", "head", "head_strong", "channel", "channel_edge", "channel_strong", "bonus")
TOLERANCE = {"chunk": 1e-4, "native": 1e-4, "triton": 1e-4, "fla": 5e-3}  # fla multiplies fp32 inputs in TF32
FORWARD_ONLY = {"native"}  # compiled forwards without autograd (a gradient to record runs `chunk` instead)
# The Triton linear recurrence with its schedule fixed, beside `triton` (schedule="auto"), to measure the auto rule.
SCHEDULE_VARIANTS = ("triton_sequential", "triton_chunk_parallel")


def op_call(op: str, backend: str):
    """`backend` of `op` as a callable taking the op's tensors: its public entry point, or for a schedule
    variant the Triton linear recurrence with `schedule` fixed."""
    if backend in SCHEDULE_VARIANTS:
        from kernels.linear_recurrence.triton import linear_recurrence_triton
        return functools.partial(linear_recurrence_triton, schedule=backend.removeprefix("triton_"))
    return functools.partial(linear_recurrence if op == "linear_recurrence" else delta_rule, backend=backend)


def available_backends(op: str) -> set[str]:
    if op == "delta_rule":
        return set(DELTA_BACKENDS)
    return set(LR_BACKENDS) | (set(SCHEDULE_VARIANTS) if "triton" in LR_BACKENDS else set())


def make_inputs(op: str, decay: str, B: int, T: int, H: int, K: int, device: str, dtype: torch.dtype, grad: bool):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, device=device) for _ in range(3))
    args = dict(q=q, k=F.normalize(k, dim=-1) if op == "delta_rule" else k, v=v)
    args = {n: t.to(dtype) for n, t in args.items()}
    if op == "delta_rule":
        args["beta"] = torch.rand(B, T, H, device=device).to(dtype)
    if decay == "head":
        args["log_decay"] = F.logsigmoid(torch.randn(B, T, H, device=device) + 3)
    elif decay == "head_strong":  # −1 to −2 per step: 64-token chunks span 64–128 (Gated DeltaNet's fast heads)
        args["log_decay"] = -(1 + torch.rand(B, T, H, device=device))
    elif decay == "channel_edge":  # −1.4 to −1.9 per step: chunks span 90–120, where factor products go denormal
        args["log_decay"] = -(1.4 + 0.5 * torch.rand(B, T, H, K, device=device))
    elif decay in ("channel", "bonus"):  # RWKV-6 style w = −exp(·), ~−0.6 per step: the factored chunk form
        args["log_decay"] = -torch.exp(torch.randn(B, T, H, K, device=device) - 1)
    elif decay == "channel_strong":  # channels reaching −20 per step and beyond: the stable (halved, pairwise) form
        args["log_decay"] = -torch.exp(1.5 * torch.randn(B, T, H, K, device=device))
    if decay == "bonus":
        args["bonus"] = torch.randn(H, K, device=device)
    return {n: t.requires_grad_(grad) for n, t in args.items()}


def chunk_form(op: str, log_decay) -> str:
    """Which forms the torch `chunk` backend takes on these decays: the share of chunks factored whole and
    how the other chunks' tokens are computed."""
    if op == "delta_rule":
        return f"C={delta_chunk_size(log_decay)}"
    if log_decay is None:
        return f"C={CHUNK}"
    forms = chunk_forms(log_decay)
    chunk, factored = forms.pop("chunk"), forms.pop("factored_chunks")
    text = f"C={chunk}, {'all' if factored == 1 else f'{100 * factored:.1f}%'} of chunks factored"
    rest = [f"{100 * share:.1f}% {name.replace('_', ' ')}" for name, share in forms.items() if share > 0]
    return text + (f"; their tokens: {', '.join(rest)}" if rest else "")


def _flops(op: str, T: int, H: int, K: int) -> float:
    """Nominal matmul work of the chunked algorithm (K = V, C = CHUNK), per the module docstring."""
    C = CHUNK
    per_token = 2 * C * K + 2 * C * K + 4 * K * K  # q kᵀ, scores v, q S, kᵀ v
    if op == "delta_rule":  # + k kᵀ, triangular solve, attn w, transition and its state product
        per_token += 2 * C * K + C * 2 * K + 2 * C * K + 2 * K * K + 2 * K * K
    return H * T * per_token


def _outputs_and_grads(call, args):
    o, _ = call(**args)
    weights = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(o.device)
    tensors = [t for t in args.values() if t.requires_grad]
    return [o.float()] + [g.float() for g in torch.autograd.grad((o.float() * weights).sum(), tensors)]


def check_backend(op: str, decay: str, backend: str, B: int, T: int, H: int, K: int, device: str) -> float:
    """Largest error (relative to the reference's magnitude) of outputs and gradients vs the fp32 loop."""
    args = make_inputs(op, decay, B, min(T, CHECK_LENGTH), H, K, device, torch.float32, grad=True)
    reference = _outputs_and_grads(op_call(op, "naive"), args)
    candidate = _outputs_and_grads(op_call(op, backend), args)
    if backend in FORWARD_ONLY:  # the output of the call that runs compiled, beside the gradients of the one that can't
        with torch.no_grad():
            candidate[0] = op_call(op, backend)(**args)[0].float()
    return max(((c - r).abs().max() / r.abs().max().clamp_min(1.0)).item() for c, r in zip(candidate, reference))


def bench_case(op: str, decay: str, B: int, T: int, H: int, K: int, backends: list[str], baseline: str,
               device: str, dtype: torch.dtype, repeats: int) -> list[dict]:
    available = available_backends(op)
    rows = []
    for backend in backends:
        if backend not in available:
            continue
        call = op_call(op, backend)
        row = {"op": op, "decay": decay, "backend": backend, "B": B, "T": T, "H": H, "K": K, "V": K,
               "dtype": str(dtype).removeprefix("torch.")}
        try:
            row["rel_err"] = check_backend(op, decay, backend, B, T, H, K, device) if backend != "naive" else 0.0
        except RuntimeError as error:  # e.g. fla not installed: say so in the row, time nothing
            row.update(rel_err=None, correct=False, error=str(error).splitlines()[0])
            rows.append(row)
            continue
        row["correct"] = row["rel_err"] <= TOLERANCE.get(backend, 1e-4)
        slow = backend == "naive"
        args = make_inputs(op, decay, B, T, H, K, device, dtype, grad=False)
        if backend == "chunk":
            row["form"] = chunk_form(op, args.get("log_decay"))
        if backend in FORWARD_ONLY:
            row["form"] = "forward compiled (GF/s: the chunk form's nominal work); forward+backward runs chunk"
        if op == "linear_recurrence" and backend.startswith("triton"):
            from kernels.linear_recurrence.triton import schedule_for
            schedule = backend.removeprefix("triton_") if backend in SCHEDULE_VARIANTS else "auto"
            row["schedule"] = schedule_for(args["q"], args["v"], args.get("log_decay"), schedule)
        with torch.no_grad():
            fwd = time_call(lambda: call(**args), repeats=1 if slow else repeats)
        grad_args = make_inputs(op, decay, B, T, H, K, device, dtype, grad=True)

        def fwd_bwd():
            call(**grad_args)[0].float().sum().backward()

        fb = time_call(fwd_bwd, repeats=1 if slow else repeats, warmup=0 if slow else 1)
        flops = B * _flops(op, T, H, K)
        row.update(fwd_s=fwd["median_s"], fwdbwd_s=fb["median_s"], fwd_spread_s=[fwd["min_s"], fwd["max_s"]],
                   fwd_gflops=flops / fwd["median_s"] / 1e9, fwdbwd_gflops=3 * flops / fb["median_s"] / 1e9)
        if torch.cuda.is_available() and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fwd_bwd()
            row["fwdbwd_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
    base = next((r for r in rows if r["backend"] == baseline and r.get("correct")), None)
    for row in rows:
        ok = base is not None and row.get("correct") and "fwd_s" in row
        row["speedup_fwd"] = base["fwd_s"] / row["fwd_s"] if ok else None
        row["speedup_fwdbwd"] = base["fwdbwd_s"] / row["fwdbwd_s"] if ok else None
        row["baseline"] = baseline
    return rows


def matmul_call(device: str, dtype: torch.dtype, n: int):
    """One n × n × n matrix product in `dtype` as a callable (2n³ FLOPs a call): the yardstick's work."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return lambda: a @ b


def matmul_gflops(device: str, dtype: torch.dtype, n: int = 1024) -> float:
    """This machine's matmul throughput in the benchmark's dtype, measured now, as the yardstick."""
    n = 8192 if device == "cuda" else n
    t = time_call(matmul_call(device, dtype, n), repeats=5)["median_s"]
    return 2 * n ** 3 / t / 1e9


def _print_row(r: dict, peak: float) -> None:
    if "fwd_s" not in r:
        print(f"{r['op']:18} {r['decay']:14} {r['T']:>6} {r['backend']:21} unavailable: {r.get('error')}", flush=True)
        return
    sx = lambda s: f"{s:7.2f}" if s is not None else "   FAIL"
    print(f"{r['op']:18} {r['decay']:14} {r['T']:>6} {r['backend']:21} {r['rel_err']:9.1e} {r['fwd_s'] * 1e3:10.2f} "
          f"{sx(r['speedup_fwd'])} {r['fwdbwd_s'] * 1e3:10.2f} {sx(r['speedup_fwdbwd'])} {r['fwd_gflops']:10.1f} "
          f"{100 * r['fwd_gflops'] / peak:6.1f}%  {r.get('form') or r.get('schedule', '')}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="recurrence",
                        choices=["recurrence", "distill_loss", "mixer_loss", "fused_ops", "all"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64, help="K = V per head")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"],
                        help="timing dtype (default fp32 on CPU, bf16 on CUDA)")
    parser.add_argument("--backends", default=None,
                        help="comma list; default naive,chunk,native on CPU, chunk,triton,fla on CUDA")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per non-naive backend (median)")
    parser.add_argument("--cases", default=CASES, help=f"op:decay,... with decay {'|'.join(DECAYS)}")
    parser.add_argument("--quick", action="store_true", help="loss and fused-operator suites: tiny shapes")
    parser.add_argument("--json", help="also write the rows (with the machine header) to this file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        cases = [tuple(c.split(":")) for c in args.cases.split(",")]
        if any(t <= 0 for t in lengths) or any(len(c) != 2 or c[1] not in DECAYS for c in cases):
            raise ValueError
    except ValueError:
        print("error: --lengths must be positive integers like 512,2048 and --cases like op:decay,...", file=sys.stderr)
        return 2
    if args.suite == "fused_ops" and args.device != "cpu":
        print("error: --suite fused_ops times compiled CPU passes; use --device cpu", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    on_gpu = args.device == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if on_gpu else "fp32")]
    backends = (args.backends or ("chunk,triton,fla" if on_gpu else "naive,chunk,native")).split(",")
    baseline = "chunk" if on_gpu else "naive"
    print(header())
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    if args.suite in ("recurrence", "all"):
        peak = matmul_gflops(args.device, dtype)
        result["matmul_gflops"] = peak
        print(f"{args.dtype or dtype} matmul yardstick: {peak:.1f} GFLOP/s; speed-ups are vs {baseline}")
        print(f"{'op':18} {'decay':14} {'T':>6} {'backend':21} {'rel err':>9} {'fwd ms':>10} {'x':>7} "
              f"{'f+b ms':>10} {'x':>7} {'GF/s fwd':>10} {'%peak':>7}  form")
        for op, decay in cases:
            for T in lengths:
                rows = bench_case(op, decay, args.batch, T, args.heads, args.dim, backends, baseline, args.device,
                                  dtype, args.repeats)
                for r in rows:
                    _print_row(r, peak)
                result["rows"] += rows
                _write(args.json, result)
    if args.suite in ("distill_loss", "all"):
        from bench.perf import distill_loss_bench
        result["distill_loss"] = distill_loss_bench.run(args.device, quick=args.quick)
        _write(args.json, result)
    if args.suite in ("mixer_loss", "all"):
        from bench.perf import mixer_loss_bench
        result["mixer_loss"] = mixer_loss_bench.run(args.device, quick=args.quick)
        _write(args.json, result)
    if args.suite == "fused_ops" or (args.suite == "all" and args.device == "cpu"):
        from bench.perf import fused_ops_bench
        result["fused_ops"] = fused_ops_bench.run(args.device, quick=args.quick)
        _write(args.json, result)
    return 0


def _write(path, result) -> None:
    """Rewritten after every case, so a run cut short still leaves what it measured."""
    if path:
        from bench.files import atomic_write_json
        atomic_write_json(path, result)


if __name__ == "__main__":
    sys.exit(main())
