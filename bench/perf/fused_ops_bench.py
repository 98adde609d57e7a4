"""Compiled CPU passes of the mixers' smaller operators against their torch forms, side by side in one run.

    python -m bench.perf.fused_ops_bench [--quick] [--json FILE] [--threads N]

One row per operator and length (batch 1, the embedded teacher's shapes: width 256, 4 heads of 64): RWKV-6's token
shift and decay (`kernels.ddlerp`, ranks 32 / 64), the read-out norm with its gate (`kernels.head_norm`: rms + SiLU
on a strided gate as gated_deltanet's, layer + SiLU, layer + sigmoid, and MetaLA's with its self-augmentation), the
sigmoid decay gate (`kernels.decay_gate`, τ = 16: GLA's log α, MetaLA's with 1 − α), the short convolution over the
stacked q, k, v channels (`students.layers.short_conv`, 768 channels, 4 taps, SiLU; and with gated_deltanet's q/k
normalisation), and the teacher's causal attention (`kernels.causal_attention`, 4 query and 2 key-value heads,
against sdpa). Without a gradient to record, each runs its torch form (inside
`kernels.native.disabled()`) and its compiled pass, the two taking turns (`time_round_robin`); the compiled output
must agree with the torch form's within 1e-5 of its largest value (else FAIL and no ratio). CPU only: on CUDA
these calls run the torch forms.
"""
from __future__ import annotations

import functools
import sys

import torch

from bench.perf.timing import loss_suite_main, time_round_robin
from bench.provenance import header
from kernels import native
from kernels.causal_attention import causal_attention
from kernels.ddlerp import ddlerp
from kernels.decay_gate import decay_gate
from kernels.head_norm import head_norm
from students.layers import short_conv, short_conv_normalized

WIDTH, HEADS, HEAD_DIM, CONV_CHANNELS, TAPS = 256, 4, 64, 768, 4
FULL = {"lengths": (2048, 16384), "repeats": 9}
QUICK = {"lengths": (40, 70), "repeats": 2}
TOLERANCE = 1e-5  # of the output's largest magnitude


def _operators(T: int) -> dict:
    """{name: a call returning the operator's output (a tensor or a tuple of them)} on seeded inputs of length T."""
    g = torch.Generator().manual_seed(0)
    randn = functools.partial(torch.randn, generator=g)
    rank, decay_rank = 32, 64
    rwkv = dict(x=randn(1, T, WIDTH), previous=randn(1, 1, WIDTH), maa_x=torch.rand(WIDTH, generator=g),
                maa_w1=randn(WIDTH, 5 * rank) * 0.1, maa=torch.rand(5, WIDTH, generator=g),
                maa_w2=randn(5, rank, WIDTH) * 0.1, time_decay=randn(WIDTH) - 2,
                decay_w1=randn(WIDTH, decay_rank) * 0.1, decay_w2=randn(decay_rank, WIDTH) * 0.1)
    core = randn(1, T, HEADS, HEAD_DIM)
    gate = randn(1, T, 3 * HEADS * HEAD_DIM)[..., :HEADS * HEAD_DIM].unflatten(-1, (HEADS, HEAD_DIM))  # strided
    weight, bias = randn(HEAD_DIM), randn(HEAD_DIM)
    augment = (randn(1, T, HEADS, HEAD_DIM), torch.rand(1, T, HEADS, HEAD_DIM, generator=g),
               randn(1, T, HEADS, HEAD_DIM), randn(HEADS, HEAD_DIM))  # MetaLA's q, 1 − α, v, w_aug
    gate_in = randn(1, T, HEADS, HEAD_DIM) * 4  # the decay projection's output
    stacked = randn(1, T, CONV_CHANNELS + WIDTH)[..., :CONV_CHANNELS]  # a split of a stacked projection
    conv_weight = randn(CONV_CHANNELS, TAPS) * 0.5
    # the teacher's attention as transformers hands it over: (B, T, H, D) memory viewed as (B, H, T, D)
    query = randn(1, T, HEADS, HEAD_DIM).transpose(1, 2)
    key, value = (randn(1, T, HEADS // 2, HEAD_DIM).transpose(1, 2) for _ in range(2))
    return {
        "ddlerp": lambda: ddlerp(**rwkv),
        "head_norm rms+silu": lambda: head_norm(core, weight, None, gate, kind="rms", activation="silu"),
        "head_norm layer+silu": lambda: head_norm(core, weight, bias, gate, kind="layer", activation="silu"),
        "head_norm layer+sigmoid": lambda: head_norm(core, weight, bias, gate, kind="layer", activation="sigmoid"),
        "head_norm metala": lambda: head_norm(core, None, None, gate, kind="layer", activation="silu", augment=augment),
        "decay_gate gla": lambda: decay_gate(gate_in, 16.0),
        "decay_gate metala": lambda: decay_gate(gate_in, 16.0, complement=True),
        "short_conv": lambda: short_conv(stacked, conv_weight, None, True),
        "short_conv + q/k norm": lambda: short_conv_normalized(stacked, conv_weight, None, True, None,
                                                               2 * HEADS * HEAD_DIM, HEAD_DIM),
        "causal_attention": lambda: causal_attention(query, key, value),
    }


def _tensors(output) -> list[torch.Tensor]:
    return [t for t in (output if isinstance(output, (tuple, list)) else (output,)) if isinstance(t, torch.Tensor)]


def _torch_form(fn):
    def call():
        with native.disabled():
            return fn()
    return call


def run(device: str, quick: bool = False) -> list[dict]:
    """Check and time every operator at every length, print the table and return its rows."""
    config = QUICK if quick else FULL
    compiled = native.module() is not None
    print(header())
    note = "" if compiled else "; the C++ extension could not be built here: both columns run the torch forms"
    print(f"compiled CPU passes against their torch forms (batch 1, no gradient, fp32{note})")
    print(f"{'operator':26} {'T':>6} {'torch ms':>10} {'native ms':>10} {'x':>7} {'max diff':>10}")
    rows = []
    for T in config["lengths"]:
        for name, fn in _operators(T).items():
            with torch.no_grad():
                reference, ours = _tensors(_torch_form(fn)()), _tensors(fn())
                scale = max(t.abs().max().item() for t in reference)
                diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(reference, ours))
                timing = time_round_robin({"torch": _torch_form(fn), "native": fn}, repeats=config["repeats"])
            correct = diff <= TOLERANCE * max(scale, 1.0)
            torch_s, native_s = timing["torch"]["median_s"], timing["native"]["median_s"]
            row = {"op": name, "T": T, "device": device, "torch_s": torch_s, "native_s": native_s,
                   "max_abs_diff": diff, "correct": correct, "compiled": compiled,
                   "speedup": torch_s / native_s if correct else None,
                   "torch_times_s": timing["torch"]["times_s"], "native_times_s": timing["native"]["times_s"]}
            rows.append(row)
            ratio = f"{row['speedup']:6.2f}x" if correct else "   FAIL"
            print(f"{name:26} {T:>6} {1e3 * torch_s:>10.2f} {1e3 * native_s:>10.2f} {ratio} {diff:>10.2e}", flush=True)
    return rows


def main(argv=None) -> int:
    return loss_suite_main(argv, __doc__.splitlines()[0], run, devices=("cpu",))


if __name__ == "__main__":
    sys.exit(main())
