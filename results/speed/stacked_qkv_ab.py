"""Probe: linear_attention's, retnet's, gla's and xlstm's projections of x as one stacked product in training
(`students.layers.stacked_linear`, as mamba, rwkv and gated_deltanet project) against their separate products, in
the default end_to_end step, alternating step by step in one process; first the two forms' logits and gradients.

    python results/speed/stacked_qkv_ab.py linear_attention,retnet,gla,xlstm [rounds]
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
from bench.perf.timing import time_round_robin
from bench.provenance import header
from students.base import Features
from students.layers import split_heads, stacked_linear
from students.mixers import gla, linear_attention, retnet, xlstm

STACKED = {"on": False}


def la_featurize(self, x, state):
    H = self.num_heads
    q_raw, k_raw, v = (split_heads(t, H) for t in stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj]).chunk(3, -1))
    q, k = self.phi(q_raw), self.phi(k_raw)
    V = v.shape[-1]
    if self.normalize:
        v = torch.cat([v.float(), v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)], dim=-1)
    return Features(q=q, k=k, v=v, scale=1.0 if self.normalize else self.head_dim ** -0.5, value_dim=V,
                    window_q=q_raw, window_k=k_raw)


def retnet_featurize(self, x, state):
    H = self.num_heads
    position = state.get("position", 0)
    q, k, v, g = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj]).chunk(4, -1)
    q, k, v = (split_heads(t, H) for t in (q, k, v))
    q, k = self.rotary(q, position), self.rotary(k, position)
    log_decay = self.log_gamma(x.device).expand(x.shape[0], x.shape[1], H)
    return Features(q=q, k=k, v=v, log_decay=log_decay, context={"g": g}, carry={"position": position + x.shape[1]})


def gla_featurize(self, x, state):
    H = self.num_heads
    widths = [self.q_proj.out_features] * 4 + [self.gk_down.out_features]
    q, k, v, g, down = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.gk_down]).split(widths, -1)
    q, k, v = (split_heads(t, H) for t in (q, k, v))
    log_decay = F.logsigmoid(split_heads(self.gk_up(down), H).float()) / gla.GATE_TEMPERATURE
    return Features(q=q, k=k, v=v, log_decay=log_decay, context={"g": split_heads(g, H)})


def xlstm_featurize(self, x, state):
    H = self.num_heads
    q, k, v, o = stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj, self.o_gate]).chunk(4, dim=-1)
    q, k, v = (split_heads(t, H) for t in (q, k, v))
    log_input = xlstm.soft_cap(self.i_gate(x).float())
    log_forget = F.logsigmoid(xlstm.soft_cap(self.f_gate(x).float()))
    ones = v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)
    return Features(q=q, k=k.float() * log_input.exp()[..., None], v=torch.cat([v.float(), ones], -1),
                    log_decay=log_forget, value_dim=v.shape[-1], window_k=k,
                    context={"k_raw": k, "log_input": log_input, "o": o})


CLASSES = {"linear_attention": (linear_attention.LinearAttentionMixer, la_featurize),
           "retnet": (retnet.RetNetMixer, retnet_featurize), "gla": (gla.GLAMixer, gla_featurize),
           "xlstm": (xlstm.MLSTMMixer, xlstm_featurize)}
for cls, stacked in CLASSES.values():
    separate = cls.featurize
    cls.featurize = (lambda sep, st: lambda self, x, state: (st if STACKED["on"] else sep)(self, x, state))(separate, stacked)


def logits_and_grads(student, teacher, batch, bf16):
    student.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        logits = student(batch).logits
    logits.float().pow(2).mean().backward()
    return logits.detach().float(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
bf16 = use_bf16("auto", torch.device("cpu"))
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
print(header())
print(f"end_to_end, batch 8 x 512, bf16 autocast {bf16}; separate and stacked projections taking turns "
      f"(time_round_robin), {rounds} rounds, "
      f"s/step ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
for name in sys.argv[1].split(","):
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    for precision in (False, bf16):
        results = []
        for on in (False, True):
            STACKED["on"] = on
            results.append(logits_and_grads(student, teacher, batch[:2, :200], precision))
        (la, ga), (lb, gb) = results
        worst = max(((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp_min(1e-30)).item() for n in ga)
        print(f"  {name:16s} {'bf16' if precision else 'fp32'}: logits max |diff| {(la - lb).abs().max().item():.2e}; "
              f"largest gradient difference over the parameter's largest {worst:.2e} (same set: {ga.keys() == gb.keys()})")
    student.zero_grad(set_to_none=True)
    step = step_fn("end_to_end", student, teacher, batch, bf16)
    times = time_round_robin({"separate": step, "stacked": step}, repeats=rounds, warmup=2,
                             before={"separate": lambda: STACKED.update(on=False),
                                     "stacked": lambda: STACKED.update(on=True)})
    separate, stacked = times["separate"]["median_s"], times["stacked"]["median_s"]
    ratios = sorted(a / b for a, b in zip(times["separate"]["times_s"], times["stacked"]["times_s"]))
    print(f"  {name:16s} separate {separate:.3f}  stacked {stacked:.3f}  x{separate / stacked:.3f}  (per-round ratios "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}, median {statistics.median(ratios):.3f})", flush=True)
