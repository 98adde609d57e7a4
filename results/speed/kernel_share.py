"""Probe: how much of a distillation step's bf16 speed-up the recurrence kernel holds back (issue 19).

    python results/speed/kernel_share.py [--students a,b] [--stage end_to_end] [--rounds 5] [--jsonl FILE]

One process per call. For each student, one optimiser step (batch 8 × 512, qkv_copy) four ways, interleaved
round by round: the old path (eager fp32, torch's per-tensor AdamW) and the default (bf16 autocast, the run's
fused AdamW), each with the real recurrence kernel and with a stub in its place (o = v + 0 · (Σ q + Σ k + decay
+ β + bonus): no mixing, no state, but every kernel input still gets a gradient, so the backward of the
projections, gates and decays that feed the kernel is still timed). The kernel's cost is real − stub in each mode; the
stub's fp32 / bf16 ratio is the speed-up the rest of the step (teacher, projections, MLPs, norms, loss,
optimiser) reaches alone. Medians over the rounds after the first. Appends one JSON line per student.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import students  # noqa: E402
import students.base as base  # noqa: E402
import students.mixers.xlstm as xlstm_module  # noqa: E402  (imports linear_recurrence itself)
from bench.data.teacher import EMBEDDED_TEACHER  # noqa: E402
from bench.distill import stages as stage_lib  # noqa: E402
from bench.distill.loop import adamw  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="mamba,linear_attention,rwkv,retnet,gla,xlstm,metala,gated_deltanet")
parser.add_argument("--stage", default="end_to_end")
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--jsonl", type=Path)
args = parser.parse_args()

REAL = {"linear_recurrence": base.linear_recurrence, "delta_rule": base.delta_rule}


def stub(q, k, v, *args, **kwargs):
    """(o, final state) as the kernels return them; o depends on every input (zero weight) so all get gradients."""
    inputs = [kwargs.get(name) for name in ("log_decay", "bonus", "beta")] + list(args)
    touch = q.float().sum(-1, keepdim=True) + k.float().sum(-1, keepdim=True)  # (B, T, H, 1)
    for x in inputs:
        if torch.is_tensor(x) and x.requires_grad:
            touch = touch + x.float().sum()
    return v.float() + 0.0 * touch, None


def use_kernels(real: bool) -> None:
    for name, fn in REAL.items():
        setattr(base, name, fn if real else stub)
    xlstm_module.linear_recurrence = REAL["linear_recurrence"] if real else stub


def git(*cmd: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True).stdout.strip()


commit = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
stage = stage_lib.STAGES[args.stage]
for name in args.students.split(","):
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    module = stage_lib.StageModule(stage, student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    # lr 0: every round steps the same weights, so the four ways time identical work
    optimizers = {"fp32": torch.optim.AdamW(params, lr=0.0, weight_decay=0.0), "bf16": adamw(params, 0.0, 0.0)}

    def step(mode: str) -> None:
        with stage_lib.teacher_attention([teacher], stage.needs_attention_weights), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss, _ = module(batch)
        optimizers[mode].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[mode].step()

    times: dict[str, list[float]] = {}
    for _ in range(args.rounds + 1):
        for kernel in ("real", "stub"):
            use_kernels(kernel == "real")
            for mode in ("fp32", "bf16"):
                start = time.perf_counter()
                step(mode)
                times.setdefault(f"{kernel}/{mode}", []).append(time.perf_counter() - start)
    use_kernels(True)
    ms = {key: 1e3 * statistics.median(values[1:]) for key, values in times.items()}
    line = {"student": name, "stage": args.stage, "step_ms": {k: round(v, 1) for k, v in ms.items()},
            "kernel_ms": {mode: round(ms[f"real/{mode}"] - ms[f"stub/{mode}"], 1) for mode in ("fp32", "bf16")},
            "speedup_whole": round(ms["real/fp32"] / ms["real/bf16"], 3),
            "speedup_without_kernel": round(ms["stub/fp32"] / ms["stub/bf16"], 3),
            "rounds": args.rounds, "batch": [8, 512], "commit": commit, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": "2-core x86_64 CPU",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(line), flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as out:
            out.write(json.dumps(line) + "\n")
