"""Probe: RoPE in training as torch ops against the inductor-compiled form (`kernels.rotary`, the default on CPU
where a gradient is recorded), alone at the distillation batch (forward + backward, bf16 q as autocast gives it)
and inside the default end_to_end step of the students that rotate (retnet; the attention student, a hybrid's
layer), switched round by round in one process (each round: one step of each side, the order alternating), after
warm-ups.

    python results/speed/rotary_ab.py [students] [rounds]
"""
import statistics
import sys
import time

import torch

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.perf.timing import time_call
from bench.provenance import header
from kernels.rotary import rotary, rotary_inductor
from students.layers import rope_inv_freq, rotary_angles

names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["retnet", "attention"]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
print(header())
print(time.strftime("started %Y-%m-%dT%H:%M:%SZ", time.gmtime()))

torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
config = teacher.config
B, T, H = 8, 512, config.num_attention_heads
D = config.hidden_size // H
cos, sin = rotary_angles(rope_inv_freq(D, 10000.0), 0, T, "cpu")
upstream = torch.randn(B, T, H, D)
print(f"\none call alone, forward + backward, B={B} T={T} H={H} D={D}, medians of 20 (ms):")
for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(B, T, H, D).to(dtype).requires_grad_()
    ms = {backend: time_call(lambda: rotary(x, cos, sin, backend=backend).float().backward(upstream), 20,
                             warmup=3)["median_s"] * 1e3 for backend in ("torch", "inductor")}
    print(f"  {str(dtype)[6:]:9s} torch {ms['torch']:6.2f}  inductor {ms['inductor']:6.2f}  "
          f"({ms['torch'] / ms['inductor']:.2f}x)")

compiled_min_tokens = rotary_inductor.min_tokens
batch = torch.randint(0, config.vocab_size, (B, T))
bf16 = use_bf16("auto", torch.device("cpu"))
print(f"\nend_to_end step (bf16 autocast {bf16}), {rounds} rounds, s: median torch / median inductor "
      "(x, per-round range)")
for name in names:
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    step = step_fn("end_to_end", student, teacher, batch, bf16)
    times = {True: [], False: []}

    def run(compiled: bool) -> None:
        rotary_inductor.min_tokens = compiled_min_tokens if compiled else 1 << 62  # off: the torch form
        step()

    for side in (True, False, True, False):
        run(side)
    for r in range(rounds):
        for side in ((True, False) if r % 2 else (False, True)):
            start = time.perf_counter()
            run(side)
            times[side].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"  {name:16s} {statistics.median(times[False]):.3f} / {statistics.median(times[True]):.3f}  "
          f"{statistics.median(times[False]) / statistics.median(times[True]):.3f}x ({min(ratios):.2f}-{max(ratios):.2f})")
print(time.strftime("ended %Y-%m-%dT%H:%M:%SZ", time.gmtime()))
