"""Probe: the teacher-family MLP's SiLU gate and the residual RMSNorm compiled by inductor (their elementwise passes
and gradients fused; projections stay eager), against eager, in the default end_to_end step, alternating step by
step in one process.

    python results/speed/mlp_norm_inductor_ab.py retnet,xlstm [rounds]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.distill.loop import use_bf16
from bench.perf.distill_speed import step_fn
from bench.provenance import header

FUSED = {"on": False}


def norm_form(x, weight, eps: float):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul(gate, up):
    return F.silu(gate) * up


compiled_norm = torch.compile(norm_form, dynamic=False)
compiled_silu_mul = torch.compile(silu_mul, dynamic=False)


def patch(model):
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            original = module.forward
            module.forward = (lambda m, orig: lambda x: compiled_norm(x, m.weight, m.variance_epsilon)
                              if FUSED["on"] else orig(x))(module, original)
        elif name.endswith("MLP") and hasattr(module, "gate_proj"):
            original = module.forward
            module.forward = (lambda m, orig: lambda x: m.down_proj(compiled_silu_mul(m.gate_proj(x), m.up_proj(x)))
                              if FUSED["on"] else orig(x))(module, original)


torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
bf16 = use_bf16("auto", torch.device("cpu"))
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
print(header())
print(f"end_to_end, batch 8 x 512, bf16 autocast {bf16}; eager and fused steps alternating, {rounds} rounds, s/step "
      f"({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
patch(teacher)
for name in sys.argv[1].split(","):
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    patch(student)
    step = step_fn("end_to_end", student, teacher, batch, bf16)
    started = time.perf_counter()
    for on in (False, True, False, True):  # warm-up; the first fused steps compile
        FUSED["on"] = on
        step()
    warm = time.perf_counter() - started
    times = {False: [], True: []}
    for _ in range(rounds):
        for on in (False, True):
            FUSED["on"] = on
            start = time.perf_counter()
            step()
            times[on].append(time.perf_counter() - start)
    eager, fused = statistics.median(times[False]), statistics.median(times[True])
    ratios = sorted(a / b for a, b in zip(times[False], times[True]))
    print(f"  {name:16s} eager {eager:.3f}  fused {fused:.3f}  x{eager / fused:.3f}  (per-round ratios "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}; warm-up incl. compiling {warm:.1f} s)", flush=True)
