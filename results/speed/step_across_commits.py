"""Probe: one distillation optimiser step timed in the checkout it runs from, for comparing two commits.

    python results/speed/step_across_commits.py --repo DIR --mode fp32|default|auto [--students a,b] [--stages ...]

Run from a worktree of each commit in turn (A, B, A, B, ... as separate processes, one at a time); each prints
one JSON line of median step times. Used for issue 19's "tokens/s ≥ 2× today's default run": the commit the
issue was filed at (default fp32 on CPU then) against the current default (bf16 autocast). Works with both
layouts of the stage code (bench/stages.py before the bench/ split, bench/distill/stages.py after).
`--mode auto` is the run's default as the checkout resolves `--dtype auto` on this CPU (bf16 autocast only where
`bench.provenance.cpu_has_bf16_kernels` says the CPU has bf16 instructions) with the checkout's own optimiser.

`--serve` times single steps on request instead, for `step_across_interleaved.py`, which runs one such process per
commit and alternates their steps: it prints one JSON line describing the checkout, then reads `student/stage` lines
from stdin and answers each with one line holding that step's seconds (the first request of a key builds its step and
runs one warm-up step).
"""
import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--repo", required=True)
parser.add_argument("--mode", choices=("fp32", "default", "auto"), required=True)
parser.add_argument("--students", default="mamba,linear_attention,rwkv,retnet,gla,xlstm,metala,gated_deltanet")
parser.add_argument("--stages", default="end_to_end,hidden_alignment")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--serve", action="store_true", help="time one step per `student/stage` line read from stdin")
args = parser.parse_args()
sys.path.insert(0, args.repo)
import subprocess  # noqa: E402

import students  # noqa: E402

try:
    from bench.distill import stages as stage_lib
    from bench.data.teacher import EMBEDDED_TEACHER
except ImportError:  # the layout before the bench/ split
    from bench import stages as stage_lib
    from pathlib import Path
    EMBEDDED_TEACHER = Path(args.repo) / "bench/embedded/teacher"
# the teachers' attention for a stage (named eager_attention before the compiled teacher attention)
attention = getattr(stage_lib, "teacher_attention", None) or stage_lib.eager_attention

commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
if args.mode == "auto":
    from bench.provenance import cpu_has_bf16_kernels
    bf16 = cpu_has_bf16_kernels()
else:
    bf16 = args.mode == "default"
default_optimizer = args.mode != "fp32"
try:
    from bench.distill.loop import adamw as run_adamw
except ImportError:  # before the stages' optimiser had a function of its own
    run_adamw = None


def cpu_model() -> str:
    """The CPU's model name: machines of one capability (AVX512) differ by vendor and bf16 instructions."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def make_step(name: str, stage: str):
    """One optimiser step of `stage` for a fresh qkv_copy student `name`, as a callable returning its seconds."""
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    module = stage_lib.StageModule(stage_lib.STAGES[stage], student, [teacher], stage_lib.StageOptions())
    student.requires_grad_(False)
    params = module.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    # the checkout's own optimiser in default mode (fused AdamW from d86cd32 on), torch's default otherwise
    optimizer = run_adamw(params, 1e-6, 0.01) if run_adamw and default_optimizer else torch.optim.AdamW(params, lr=1e-6)

    def step() -> float:
        start = time.perf_counter()
        with attention([teacher], stage_lib.STAGES[stage].needs_attention_weights), \
                (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()):
            loss, _ = module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start
    return step


describe = {"commit": commit, "mode": args.mode, "autocast_bf16": bf16, "cpu_model": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
if args.serve:
    print(json.dumps(describe), flush=True)
    steps = {}
    for request in sys.stdin:
        key = request.strip()
        if key not in steps:
            steps[key] = make_step(*key.split("/"))
            steps[key]()  # warm-up
        print(json.dumps({"key": key, "s": steps[key]()}), flush=True)
    raise SystemExit(0)
results = {}
for name in args.students.split(","):
    for stage in args.stages.split(","):
        step = make_step(name, stage)
        times = [step() for _ in range(args.repeats + 1)]
        results[f"{name}/{stage}"] = statistics.median(times[1:])
print(json.dumps({**describe, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step_s": results}))
