"""Probe: the teacher's attention through torch's sdpa (CPU flash kernel) against the compiled causal attention
(`kernels.causal_attention`, native backend, `students.teacher_attention`), alone at the distillation batch and inside
the default end_to_end step, switched round by round in one process (each round: one step of each side, the order
alternating), after warm-ups.

    python results/speed/teacher_attention_ab.py [students] [rounds]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import students
import students.teacher_attention as teacher_attention
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.perf.timing import time_call
from bench.provenance import header
from kernels.causal_attention import causal_attention

names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["retnet", "linear_attention", "xlstm", "gated_deltanet"]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
print(header())
print(time.strftime("started %Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def median_ms(fn, repeats=20):
    return time_call(fn, repeats, warmup=3)["median_s"] * 1e3


torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
config = teacher.config
B, T, H, G = 8, 512, config.num_attention_heads, config.num_key_value_heads
D = config.hidden_size // H
print(f"\none layer's attention alone, B={B} T={T} H={H} G={G} D={D}, medians of 20 (ms):")
for dtype in (torch.float32, torch.bfloat16):
    q = torch.randn(B, T, H, D).transpose(1, 2).to(dtype)  # the layout transformers' projections give
    k, v = (torch.randn(B, T, G, D).transpose(1, 2).to(dtype) for _ in range(2))
    sdpa = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    compiled = median_ms(lambda: causal_attention(q, k, v, backend="native"))
    print(f"  {str(dtype)[6:]:9s} sdpa {sdpa:6.2f}  compiled {compiled:6.2f}  ({sdpa / compiled:.2f}x)")

use_compiled = {"on": True}
original = teacher_attention.uses_compiled_attention
teacher_attention.uses_compiled_attention = lambda model: use_compiled["on"] and original(model)
batch = torch.randint(0, config.vocab_size, (B, T))
bf16 = use_bf16("auto", torch.device("cpu"))
print(f"\nend_to_end step (bf16 autocast {bf16}), {rounds} rounds, s: median sdpa / median compiled (x, per-round range)")
for name in names:
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    step = step_fn("end_to_end", student, teacher, batch, bf16)
    times = {True: [], False: []}
    for side in (True, False, True, False):
        use_compiled["on"] = side
        step()
    for r in range(rounds):
        for side in ((True, False) if r % 2 else (False, True)):
            use_compiled["on"] = side
            start = time.perf_counter()
            step()
            times[side].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[False], times[True])]
    print(f"  {name:16s} {statistics.median(times[False]):.3f} / {statistics.median(times[True]):.3f}  "
          f"{statistics.median(times[False]) / statistics.median(times[True]):.3f}x ({min(ratios):.2f}-{max(ratios):.2f})")
print(time.strftime("ended %Y-%m-%dT%H:%M:%SZ", time.gmtime()))
