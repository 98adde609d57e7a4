"""Distillation-loss benchmark: materialised logits (naive) vs the chunked fused loss (torch, Triton).

    python -m bench.perf.distill_loss_bench [--device cpu|cuda] [--quick] [--json FILE]

One row per variant at B=1, T=2048, V=49152, D=576 (teacher from its hidden states and head, Dt = D):
the loss value and its relative difference from the materialised loss in fp64 on the same inputs (must be
≤ 1e-5, else the row says FAIL and no ratio is printed; fp32 forms differ from each other by rounding alone, at
times by more than from the exact value), forward+backward time, and peak memory above what the inputs already
hold; speed and memory ratios are over naive. On CUDA peak
memory is `max_memory_allocated` after `reset_peak_memory_stats`; on CPU each variant runs in a fresh
spawned process and reports its peak RSS growth (`ru_maxrss`) over the RSS after the inputs were made.
"""
from __future__ import annotations

import sys

import torch

from bench.perf.timing import in_fresh_process, loss_suite_main, peak_memory, time_call
from bench.provenance import header

FULL = {"B": 1, "T": 2048, "V": 49152, "D": 576}
QUICK = {"B": 2, "T": 63, "V": 1000, "D": 32}
TEMPERATURE, KL_WEIGHT, CE_WEIGHT = 2.0, 1.0, 0.2


def _variants(device: str, quick: bool) -> list[tuple[str, int]]:
    chunks = (16, None) if quick else (1024, None)  # None: the default, `default_chunk_size(V, device)`
    variants = [("naive", None)] + [("chunk", c) for c in chunks]
    if device == "cuda":
        variants += [("triton", c) for c in chunks]
    return variants


def _inputs(config: dict, device: str):
    g = torch.Generator().manual_seed(0)
    B, T, V, D = config["B"], config["T"], config["V"], config["D"]
    hidden = torch.randn(B, T, D, generator=g).to(device).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g) * 2 / D**0.5).to(device).requires_grad_(True)
    teacher_hidden = torch.randn(B, T, D, generator=g).to(device)
    teacher_weight = (torch.randn(V, D, generator=g) * 2 / D**0.5).to(device)
    ids = torch.randint(0, V, (B, T), generator=g).to(device)
    return hidden, weight, ids, teacher_hidden, teacher_weight


def reference_loss(config: dict, device: str) -> float:
    """The materialised loss in fp64 on the benchmark's inputs: what every variant's value is checked against."""
    from kernels.distill_loss.naive import distill_loss_naive

    hidden, weight, ids, teacher_hidden, teacher_weight = (t.detach().double() if t.is_floating_point() else t
                                                           for t in _inputs(config, device))
    with torch.no_grad():
        loss, _ = distill_loss_naive(hidden, weight, ids, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                                     temperature=TEMPERATURE, kl_weight=KL_WEIGHT, ce_weight=CE_WEIGHT)
    return loss.item()


def measure(config: dict, device: str, backend: str, chunk: int, repeats: int) -> dict:
    """Run one variant (value, peak memory of the first forward+backward, then timing)."""
    from kernels import fused_distillation_loss

    hidden, weight, ids, teacher_hidden, teacher_weight = _inputs(config, device)

    def fwd_bwd():
        hidden.grad = weight.grad = None
        loss, _ = fused_distillation_loss(hidden, weight, ids, teacher_hidden=teacher_hidden,
                                          teacher_weight=teacher_weight, temperature=TEMPERATURE, kl_weight=KL_WEIGHT,
                                          ce_weight=CE_WEIGHT, chunk_size=chunk, backend=backend)
        loss.backward()
        return loss.item()

    value, peak = peak_memory(fwd_bwd, device)
    seconds = time_call(fwd_bwd, repeats=repeats, warmup=0)["median_s"]
    from kernels.distill_loss import default_chunk_size
    used = None if backend == "naive" else (chunk or default_chunk_size(weight.shape[0], weight.device))
    return {"backend": backend, "chunk": used, "loss": value, "fwdbwd_s": seconds, "peak_mib": peak / 2**20}


def run(device: str, quick: bool = False) -> list[dict]:
    """Measure every variant side by side, print the table and return its rows."""
    config = QUICK if quick else FULL
    repeats = 3 if quick or device == "cuda" else 1
    print(header())
    reference = reference_loss(config, device)
    print(f"distillation loss, B={config['B']} T={config['T']} V={config['V']} D={config['D']} τ={TEMPERATURE} "
          f"kl_weight={KL_WEIGHT} ce_weight={CE_WEIGHT}; teacher from hidden states + head; "
          f"fp64 reference {reference:.10f}")
    print(f"{'backend':8} {'chunk':>6} {'loss':>14} {'rel diff':>10} {'f+b s':>9} {'peak MiB':>10} {'naive/this mem':>15}")
    rows = []
    for backend, chunk in _variants(device, quick):
        args = (config, device, backend, chunk, repeats)
        row = measure(*args) if device == "cuda" else in_fresh_process(measure, *args)
        naive = rows[0] if rows else row
        row.update(config, device=device, reference_loss=reference,
                   rel_diff=abs(row["loss"] - reference) / abs(reference))
        row["correct"] = row["rel_diff"] <= 1e-5
        ratios = row["correct"] and naive["correct"]
        row["memory_ratio"] = naive["peak_mib"] / max(row["peak_mib"], 1e-9) if ratios else None
        row["speedup"] = naive["fwdbwd_s"] / row["fwdbwd_s"] if ratios else None
        rows.append(row)
        ratio = ("          FAIL" if not row["correct"] else "  naive failed" if row["memory_ratio"] is None
                 else f"{row['memory_ratio']:14.1f}x")
        print(f"{backend:8} {row['chunk'] or '-':>6} {row['loss']:>14.8f} {row['rel_diff']:>10.2e} {row['fwdbwd_s']:>9.3f} "
              f"{row['peak_mib']:>10.1f} {ratio}", flush=True)
    return rows


def main(argv=None) -> int:
    return loss_suite_main(argv, __doc__.splitlines()[0], run)


if __name__ == "__main__":
    sys.exit(main())
