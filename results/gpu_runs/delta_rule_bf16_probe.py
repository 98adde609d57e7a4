"""Which launch of the Triton delta rule's 16-bit path faults on a GPU, and which launch settings avoid it.

On an H100 (triton 3.6, 2026-12-06) `test_triton_delta_rule_bf16_inputs` stopped on an illegal memory access,
reported at `_wy_bwd_kernel`'s launch (README.md beside this file); fp32 inputs pass. The 16-bit path differs in
its matrix products only: the delta rule's own kernels multiply in TF32, and the linear recurrence's chunk kernels
it calls multiply in bf16 (both on the tensor cores; fp32 products stay on the plain FMA path) with its launch
settings (8 warps, one stage), while the linear recurrence's own bf16 test, which passes, launches them with 4.
Each variant below changes one of those; each runs in a fresh process (a fault poisons the CUDA context) with
CUDA_LAUNCH_BLOCKING=1, so a fault surfaces at the launch that made it, and the line printed names that launch.

    python results/gpu_runs/delta_rule_bf16_probe.py [--shapes 0,1] [--variants ...] [--json OUT]

Without CUDA it runs in Triton's interpreter (a check of the probe itself, not of the kernels: the interpreter has
no tensor cores).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# name: (warps of the delta rule's own kernels, warps of the chunk kernels, delta kernels' 16-bit products,
# chunk kernels' 16-bit products); None keeps the code's own choice
VARIANTS = {
    "as_is": (None, None, None, None),
    "chunk_kernels_4_warps": (None, 4, None, None),
    "all_4_warps": (4, 4, None, None),
    "delta_kernels_fp32_products": (None, None, False, None),
    "chunk_kernels_fp32_products": (None, None, None, False),
    "all_fp32_products": (None, None, False, False),
}
SHAPES = [(1, 50, 2, 16, 16), (2, 300, 4, 64, 64)]  # (B, T, H, K, V): the failing test's; the students' head size
TOLERANCE = 5e-2  # the test's, for bf16 inputs against the fp32 loop


def child(variant: str, shape_index: int) -> dict:
    import torch
    import torch.nn.functional as F

    from kernels.delta_rule import delta_rule

    delta_triton = importlib.import_module("kernels.delta_rule.triton")  # `kernels.delta_rule` is also the function
    from kernels.linear_recurrence.triton import low_precision

    delta_warps, chunk_warps, delta_low, chunk_low = VARIANTS[variant]
    if delta_warps is not None:
        delta_triton.NUM_WARPS = delta_warps
    if delta_low is not None:
        delta_triton.low_precision = lambda dtype: delta_low
    real_outputs, real_gradients = delta_triton.chunk_outputs, delta_triton.chunk_gradients

    def adjusted(cfg, dtype):
        cfg = dict(cfg)
        if chunk_warps is not None:
            cfg["num_warps"] = chunk_warps
        cfg["LOW_PRECISION"] = low_precision(dtype) if chunk_low is None else chunk_low
        return cfg

    delta_triton.chunk_outputs = lambda q, k, v, b, states, cfg: real_outputs(q, k, v, b, states, adjusted(cfg, q.dtype))
    delta_triton.chunk_gradients = lambda q, k, v, b, do, states, dstates, cfg: real_gradients(
        q, k, v, b, do, states, dstates, adjusted(cfg, q.dtype))

    device = "cuda" if torch.cuda.is_available() else "cpu"
    B, T, H, K, V = SHAPES[shape_index]
    torch.manual_seed(T * 7 + K)
    inputs = dict(q=torch.randn(B, T, H, K), k=F.normalize(torch.randn(B, T, H, K), dim=-1), v=torch.randn(B, T, H, V),
                  beta=torch.rand(B, T, H), log_decay=F.logsigmoid(torch.randn(B, T, H) + 2),
                  initial_state=torch.randn(B, H, K, V))
    inputs = {n: (t.to(torch.bfloat16) if n in ("q", "k", "v", "beta") else t).to(device).requires_grad_()
              for n, t in inputs.items()}

    def run(backend):
        o, state = delta_rule(**inputs, output_final_state=True, backend=backend)
        g = torch.Generator().manual_seed(1)
        loss = (o.float() * torch.randn(o.shape, generator=g).to(device)).sum() + (
            state * torch.randn(state.shape, generator=g).to(device)).sum()
        return [o.float(), state] + [t.float() for t in torch.autograd.grad(loss, list(inputs.values()))]

    reference = run("naive")
    try:
        got = run("triton")
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - a fault is the finding
        ours = [f for f in traceback.extract_tb(error.__traceback__) if "/kernels/" in f.filename]
        last = ours[-1] if ours else None
        where = f"{Path(last.filename).parent.name}/{Path(last.filename).name}:{last.lineno} {last.line}" if last else "?"
        return {"status": "fault", "error": str(error).splitlines()[0][:200], "at": where}
    names = ["o", "state"] + [f"d{n}" for n in inputs]
    errors = {n: ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() for n, a, b in zip(names, got, reference)}
    worst = max(errors, key=errors.get)
    return {"status": "ok" if errors[worst] <= TOLERANCE else "mismatch", "worst": worst,
            "rel_err": round(errors[worst], 6)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="0,1", help="indices into SHAPES")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--timeout", type=float, default=150, help="seconds per variant and shape (compilation)")
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    variants, shapes = args.variants.split(","), [int(s) for s in args.shapes.split(",")]
    unknown = [v for v in variants if v not in VARIANTS] + [s for s in shapes if not 0 <= s < len(SHAPES)]
    if unknown:
        print(f"error: unknown variant or shape {unknown}; variants: {', '.join(VARIANTS)}; shapes 0..{len(SHAPES) - 1}",
              file=sys.stderr)
        return 2
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if not os.path.exists("/dev/nvidia0"):
        env.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, str(ROOT))
    from bench.files import atomic_write_json
    from bench.provenance import machine

    measured_on, date, rows = machine(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), []
    for shape in shapes:
        for variant in variants:
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, __file__, "--child", variant, str(shape)], env=env, cwd=ROOT,
                                      capture_output=True, text=True, timeout=args.timeout)
                lines = done.stdout.strip().splitlines()
                row = json.loads(lines[-1]) if done.returncode == 0 and lines else {
                    "status": "crash", "rc": done.returncode, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
            except subprocess.TimeoutExpired:
                row = {"status": "timeout"}
            row = {"variant": variant, "shape": dict(zip("BTHKV", SHAPES[shape])), **row,
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # after every row: a run cut short keeps what it found
                atomic_write_json(args.json, {"machine": measured_on, "date": date, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
