"""Distillation training speed: the old path (eager fp32) and the new default side by side, in one process.

    python -m bench.perf.distill_speed [--students all] [--stages end_to_end,hidden_alignment,attention_output]
        [--batch 8] [--seq-len 512] [--repeats 5] [--threads N] [--json FILE]

One optimiser step of each stage (teacher forward + student forward and backward + AdamW), on the embedded
teacher, for every student, timed in both modes (the old path: fp32 and torch's default AdamW; the default: the
run's precision and its fused AdamW) with their calls interleaved (separate runs on a shared
machine move ±20%, ratios measured side by side do not). Each mode's step FLOPs are counted by torch's
FlopCounterMode (matmuls and attention), and achieved FLOP/s is printed as a share of a matmul yardstick in
each mode's dtype, timed in the same rounds as that row's steps (the machine's rate drifts within a run too).
The file also records what else ran on the CPUs meanwhile (`bench.perf.activity`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.distill import stages as stage_lib
from bench.distill.loop import adamw, autocast, use_bf16
from bench.files import atomic_write_json
from bench.perf.activity import MachineActivity, describe
from bench.perf.kernel_bench import matmul_call
from bench.provenance import header, machine
from kernels import native

MODES = {"eager fp32": False, "default": True}  # True: the run's default precision on this device
YARDSTICK_N = 1024  # the yardstick is one n × n × n matmul


def step_fn(stage: str, student, teacher, batch: torch.Tensor, bf16: bool, run_optimizer: bool = True):
    """One optimiser step of `stage` as a callable, with its own optimiser: the mode's precision inside, and the
    run's AdamW (`loop.adamw`, fused) or, for the old path, torch's default per-tensor AdamW."""
    module = stage_lib.StageModule(stage_lib.STAGES[stage], student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    lr = 1e-6  # tiny: the weights barely move between timed steps
    optimizer = adamw(params, lr, 0.01) if run_optimizer else torch.optim.AdamW(params, lr=lr)  # 0.01: torch's
    def step():
        with stage_lib.teacher_attention([teacher], stage_lib.STAGES[stage].needs_attention_weights), \
                autocast(batch.device, bf16):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def count_flops(fn) -> int:
    """Matmul and attention FLOPs of one call (FlopCounterMode; its depthwise-convolution formulas ignore the
    groups and overstate a short convolution ~100×, so convolutions, a negligible share, are left out). The
    compiled calls are switched off for it: the counter sees only torch's ops (the teacher's attention as sdpa)."""
    with native.disabled(), FlopCounterMode(display=False) as counter:
        fn()
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" not in str(op))


def main(argv: list[str] | None = None) -> int:
    import students
    from bench.data.teacher import EMBEDDED_TEACHER

    parser = argparse.ArgumentParser(prog="python -m bench.perf.distill_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="all")
    parser.add_argument("--stages", default="end_to_end,hidden_alignment,attention_output")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"), help="the new path's precision")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = [n for n in students.available() if n != "attention"] if args.students == "all" else \
        args.students.split(",")
    stage_names = args.stages.split(",")
    unknown = [n for n in names if n not in students.available()] + [s for s in stage_names if s not in stage_lib.STAGES]
    if unknown or min(args.batch, args.seq_len, args.repeats) < 1:
        print(f"error: unknown student or stage {unknown} or a non-positive size; students: "
              f"{', '.join(students.available())}; stages: {', '.join(stage_lib.STAGES)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = students.load_teacher(str(EMBEDDED_TEACHER))
    batch = torch.randint(0, teacher.config.vocab_size, (args.batch, args.seq_len))
    default_bf16 = use_bf16(args.dtype, batch.device)
    yardsticks = {"eager fp32": matmul_call("cpu", torch.float32, YARDSTICK_N),
                  "default": matmul_call("cpu", torch.bfloat16 if default_bf16 else torch.float32, YARDSTICK_N)}
    yardstick_flops = 2 * YARDSTICK_N ** 3
    measured_on = machine()  # at the start: the commit the timed code came from, whatever is committed during the run
    print(header())
    print(f"batch {args.batch} x {args.seq_len}; default = {'bf16 autocast' if default_bf16 else 'fp32'}; matmul "
          f"yardstick {YARDSTICK_N}^3 in each mode's dtype, timed in each row's rounds")
    print(f"{'student':16} {'stage':18} {'eager fp32 tok/s':>16} {'default tok/s':>14} {'x':>6} "
          f"{'GF/step':>8} {'% yardstick fp32 / default':>27} {'yardstick GF/s':>15}")
    rows = []
    tokens = args.batch * args.seq_len
    with MachineActivity() as activity:
        for name in names:
            for stage in stage_names:
                student = students.build_student(teacher, name, "qkv_copy", seed=0)
                steps = {mode: step_fn(stage, student, teacher, batch, is_default and default_bf16,
                                       run_optimizer=is_default) for mode, is_default in MODES.items()}
                flops = count_flops(steps["eager fp32"])
                calls = {**steps, **{f"yardstick {mode}": fn for mode, fn in yardsticks.items()}}
                times = {key: [] for key in calls}
                for _ in range(args.repeats + 1):  # the first round warms up
                    for key, fn in calls.items():
                        start = time.perf_counter()
                        fn()
                        times[key].append(time.perf_counter() - start)
                median = {key: statistics.median(t[1:]) for key, t in times.items()}
                yardstick = {mode: yardstick_flops / median[f"yardstick {mode}"] / 1e9 for mode in steps}
                row = {"student": name, "stage": stage, "tokens_per_step": tokens, "gflop_per_step": flops / 1e9,
                       **{f"{mode}_tok_s": tokens / median[mode] for mode in steps},
                       **{f"{mode}_pct_yardstick": 100 * flops / median[mode] / 1e9 / yardstick[mode] for mode in steps},
                       "yardstick_gflops": yardstick, "speedup": median["eager fp32"] / median["default"]}
                rows.append(row)
                print(f"{name:16} {stage:18} {row['eager fp32_tok_s']:16,.0f} {row['default_tok_s']:14,.0f} "
                      f"{row['speedup']:6.2f} {flops / 1e9:8.1f} {row['eager fp32_pct_yardstick']:13.0f}% / "
                      f"{row['default_pct_yardstick']:.0f}%  {yardstick['eager fp32']:6.0f} / {yardstick['default']:.0f}",
                      flush=True)
    # the whole run's yardstick: the median of the rows', with their range
    summary = {mode: statistics.median(r["yardstick_gflops"][mode] for r in rows) for mode in MODES}
    spread = {mode: [min(r["yardstick_gflops"][mode] for r in rows), max(r["yardstick_gflops"][mode] for r in rows)]
              for mode in MODES}
    print(f"machine: {describe(activity.report())}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}  # where it was written is no setting
        atomic_write_json(args.json, {"machine": measured_on, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "activity": activity.report(), "settings": settings, "default_bf16": default_bf16,
                                      "yardstick_gflops": summary, "yardstick_gflops_range": spread, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
