"""Mixer-matrix loss benchmark (MOHAWK stage 1): materialised matrices vs the fused tiled loss (torch, Triton).

    python -m bench.perf.mixer_loss_bench [--device cpu|cuda] [--quick] [--json FILE]

One row per variant and length T ∈ (1024, 2048, 4096), B=1, 16 heads, K=D=64, GQA teacher (4 kv heads),
per-head decays (Mamba-2-like): the loss and its relative difference from the materialised value (must be
≤ 1e-4, else FAIL and no ratio), forward+backward time and peak memory above the inputs. On CUDA peak
memory is `max_memory_allocated` after `reset_peak_memory_stats`; on CPU each variant runs in a fresh
spawned process and reports its peak RSS growth (`ru_maxrss`) over the RSS after the inputs were made (and
after one small warm-up call, so thread pools and allocator set-up are not counted).
"""
from __future__ import annotations

import sys

import torch

from bench.perf.timing import in_fresh_process, loss_suite_main, peak_memory, time_call
from bench.provenance import header

FULL = {"B": 1, "H": 16, "Hkv": 4, "K": 64, "lengths": (1024, 2048, 4096)}
QUICK = {"B": 1, "H": 2, "Hkv": 1, "K": 16, "lengths": (40, 80)}
TILES = (32, 64)  # query rows per block of the tiled torch loss (default first): memory ∝ tile · T


def _variants(device: str) -> list[tuple[str, int]]:
    return [("naive", 0)] + [("tiled", t) for t in TILES] + ([("triton", 0)] if device == "cuda" else [])


def _inputs(config: dict, T: int, device: str):
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, K = config["B"], config["H"], config["Hkv"], config["K"]
    tq, tk = torch.randn(B, T, H, K, generator=g).to(device), torch.randn(B, T, Hkv, K, generator=g).to(device)
    student = dict(q=torch.randn(B, T, H, K, generator=g), k=torch.randn(B, T, H, K, generator=g),
                   log_decay=-torch.rand(B, T, H, generator=g) * 0.1, diagonal=torch.ones(H))
    return tq, tk, {n: t.to(device).requires_grad_(True) for n, t in student.items()}


def measure(config: dict, T: int, device: str, backend: str, tile: int, repeats: int) -> dict:
    """Run one variant (value and peak memory of the first forward+backward, then timing)."""
    from kernels import mixer_matrix_loss

    tile = tile or TILES[0]
    warm_tq, warm_tk, warm = _inputs(config, 2 * tile, device)  # one-time runtime set-up is not the loss's
    mixer_matrix_loss(warm_tq, warm_tk, **warm, tile=tile, backend=backend).backward()
    del warm_tq, warm_tk, warm
    tq, tk, student = _inputs(config, T, device)

    def fwd_bwd():
        for t in student.values():
            t.grad = None
        loss = mixer_matrix_loss(tq, tk, **student, tile=tile, backend=backend)
        loss.backward()
        return loss.item()

    value, peak = peak_memory(fwd_bwd, device)
    seconds = time_call(fwd_bwd, repeats=repeats, warmup=0)["median_s"]
    return {"backend": backend, "tile": tile if backend == "tiled" else None, "T": T, "loss": value,
            "fwdbwd_s": seconds, "peak_mib": peak / 2**20}


def run(device: str, quick: bool = False) -> list[dict]:
    """Measure every variant at every length, print the table and return its rows."""
    config = QUICK if quick else FULL
    repeats = 3 if quick or device == "cuda" else 1
    print(header())
    print(f"mixer-matrix loss, B={config['B']} H={config['H']} Hkv={config['Hkv']} K=D={config['K']} per-head decay, "
          f"tiles={TILES}; fwd+bwd, peak memory above the inputs")
    print(f"{'backend':8} {'T':>6} {'loss':>14} {'rel diff':>10} {'f+b s':>9} {'peak MiB':>10} {'naive/this mem':>15}")
    rows = []
    for T in config["lengths"]:
        materialised = None
        for backend, tile in _variants(device):
            args = (config, T, device, backend, tile, repeats)
            row = measure(*args) if device == "cuda" else in_fresh_process(measure, *args)
            materialised = materialised or row
            row.update(B=config["B"], H=config["H"], Hkv=config["Hkv"], K=config["K"], device=device,
                       rel_diff=abs(row["loss"] - materialised["loss"]) / abs(materialised["loss"]))
            row["correct"] = row["rel_diff"] <= 1e-4
            row["memory_ratio"] = materialised["peak_mib"] / max(row["peak_mib"], 1e-3) if row["correct"] else None
            row["speedup"] = materialised["fwdbwd_s"] / row["fwdbwd_s"] if row["correct"] else None
            rows.append(row)
            ratio = f"{row['memory_ratio']:14.1f}x" if row["correct"] else "          FAIL"
            name = f"{backend}-{tile}" if backend == "tiled" else backend
            print(f"{name:8} {T:>6} {row['loss']:>14.8f} {row['rel_diff']:>10.2e} {row['fwdbwd_s']:>9.3f} "
                  f"{row['peak_mib']:>10.1f} {ratio}", flush=True)
    longest = max(config["lengths"])
    for backend, tile in _variants(device)[1:]:
        mine = [r for r in rows if r["backend"] == backend and r["tile"] == (tile if backend == "tiled" else None)]
        growth = ", ".join(f"T={r['T']}: {r['peak_mib']:.1f} MiB" for r in mine)
        ratio = next((r["memory_ratio"] for r in mine if r["T"] == longest), None)
        shown = "FAIL" if ratio is None else f"{ratio:.1f}x"
        print(f"{backend}{f'-{tile}' if backend == 'tiled' else ''}: materialised/fused memory at T={longest}: {shown}; "
              f"fused peak by length: {growth}")
    return rows


def main(argv=None) -> int:
    return loss_suite_main(argv, __doc__.splitlines()[0], run)


if __name__ == "__main__":
    sys.exit(main())
