"""The stacked projections of 2026-12-03 against the code before them (issue 19: decode at 1k no slower than
the teacher), A/B in one process: for gated_deltanet, rwkv and mamba, the students as they are now and the same
weights with the featurize of 77edadd bound in its place.

What changed: gated_deltanet runs q, k, v, g, β and α as one product (10 products per layer → 5 with the MLP's
three); rwkv its five token-shift interpolations as one batched product and r, k, v, g as another (16 → 9); and
while decoding (`students.layers.kept_weight_stacks`, the scope `StudentForCausalLM.generate` and
`bench.throughput`'s decoder run in) the stacked weights are built once and kept, so a decoded token reads one
stacked weight instead of several (mamba's x, B, C too). The old code ran one token's projections separately.

Before timing, the two variants' logits (prefill and a decode step) and the gradients of a training step's
loss are compared. Timed side by side (`time_round_robin`, 2 threads): decode ms/token at 1,024 tokens of
context with the teacher (32 tokens per call, each call from the same cache after untimed warm steps, as
`bench.throughput` does); prefill of 2,048 tokens in inference mode; a training step (forward + backward of the
next-token loss) on 2,048 tokens.

    python results/speed/stacked_projection_ab.py [--rounds 11]
"""
import argparse
import statistics
import subprocess
import time
import types

import torch
import torch.nn.functional as F

from bench.perf.throughput import WARM_STEPS, _Decoder, _train_step, build_floor, embedded_shape_teacher
from bench.perf.timing import time_round_robin
from students.base import Features
from students.layers import short_conv, split_heads
from students.mixers.rwkv import MIX_RANK
from students.modeling import _CACHE_FIELD
from students.surgery import build_student


def old_stacked_linear(x, linears):  # students.layers.stacked_linear at 77edadd
    if x.shape[1] > 1:
        return F.linear(x, torch.cat([linear.weight for linear in linears]))
    return torch.cat([linear(x) for linear in linears], dim=-1)


def old_gated_deltanet(self, x, state):  # students/mixers/gated_deltanet.py at 77edadd
    H = self.num_heads
    convs = (self.q_conv, self.k_conv, self.v_conv)
    qkv_in = old_stacked_linear(x, [self.q_proj, self.k_proj, self.v_proj])
    caches = [state.get(name) for name in ("q_conv", "k_conv", "v_conv")]
    qkv, cache = short_conv(qkv_in, torch.cat([c.weight[:, 0] for c in convs]), None,
                            self.q_conv.activation == "silu", None if caches[0] is None else torch.cat(caches, -1))
    (q_in, k_in, _), (q, k, v), (q_cache, k_cache, v_cache) = (t.chunk(3, dim=-1) for t in (qkv_in, qkv, cache))
    q = F.normalize(split_heads(q, H).float(), dim=-1)
    k = F.normalize(split_heads(k, H).float(), dim=-1)
    beta = torch.sigmoid(self.beta_proj(x).float())
    log_decay = -self.A_log.float().exp() * F.softplus(self.decay_proj(x).float() + self.dt_bias)
    return Features(q=q, k=k, v=split_heads(v, H), beta=beta, log_decay=log_decay,
                    context={"g": split_heads(self.g_proj(x), H)},
                    window_q=split_heads(q_in, H), window_k=split_heads(k_in, H),
                    carry={"q_conv": q_cache, "k_conv": k_cache, "v_conv": v_cache})


def old_rwkv(self, x, state):  # students/mixers/rwkv.py at 77edadd
    H = self.num_heads
    B, T, D = x.shape
    previous = state.get("shift", x.new_zeros(B, 1, D)).to(x.dtype)
    shifted = torch.cat([previous, x[:, :-1]], dim=1)
    xx = shifted - x
    mix = torch.tanh(torch.addcmul(x, xx, self.maa_x) @ self.maa_w1).view(B * T, 5, MIX_RANK).unbind(1)
    xw, xk, xv, xr, xg = (torch.addcmul(x, xx, torch.addmm(self.maa_wkvrg[i], mix[i], self.maa_w2[i]).view(B, T, D))
                          for i in range(5))
    log_decay = -torch.exp(self.time_decay + torch.tanh(xw @ self.decay_w1) @ self.decay_w2)
    r, k, v = split_heads(self.r_proj(xr), H), split_heads(self.k_proj(xk), H), split_heads(self.v_proj(xv), H)
    return Features(q=r, k=k, v=v, log_decay=split_heads(log_decay.float(), H), bonus=self.bonus, scale=1.0,
                    context={"g": F.silu(self.g_proj(xg))}, carry={"shift": x[:, -1:]})


def old_mamba(self, x, state):  # students/mixers/mamba.py at 77edadd
    H = self.num_heads
    xBC_in = old_stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj])
    x_in, B_in, C_in = xBC_in.chunk(3, dim=-1)
    xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
    xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
    dt = F.softplus(self.dt_proj(x).float() + self.dt_bias)
    log_decay = -dt * self.A_log.float().exp()
    return Features(q=Cs, k=Bs * dt[..., None], v=xs, log_decay=log_decay, scale=1.0,
                    context={"z": split_heads(self.z_proj(x), H)}, carry={"conv": conv_cache},
                    window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))


OLD = {"gated_deltanet": old_gated_deltanet, "rwkv": old_rwkv, "mamba": old_mamba}


def with_old_featurize(student, name):
    for layer in student.model.layers:
        layer.mixer.featurize = types.MethodType(OLD[name], layer.mixer)
    return student


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--students", default="gated_deltanet,rwkv,mamba")
    args = parser.parse_args()
    torch.set_num_threads(2)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 2 threads, "
          f"{args.rounds} rounds, code at {commit} (plus uncommitted changes if any)")
    teacher = embedded_shape_teacher()
    names = args.students.split(",")
    models = {"floor": build_floor(teacher).eval(), "teacher": teacher}
    for name in names:
        models[name] = build_student(teacher, name, init="qkv_copy", seed=0).eval()
        models[name + " (77edadd)"] = with_old_featurize(build_student(teacher, name, init="qkv_copy", seed=0).eval(), name)
    ids = torch.randint(0, teacher.config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))

    for name in names:  # the same function before timing it
        new, old = models[name], models[name + " (77edadd)"]
        with torch.inference_mode():
            a, b = new(ids[:, :256]).logits, old(ids[:, :256]).logits
            cache_a = getattr(new(ids[:, :255], use_cache=True), _CACHE_FIELD)
            cache_b = getattr(old(ids[:, :255], use_cache=True), _CACHE_FIELD)
            step_a = new(ids[:, 255:256], use_cache=True, **{_CACHE_FIELD: cache_a}).logits
            step_b = old(ids[:, 255:256], use_cache=True, **{_CACHE_FIELD: cache_b}).logits
        grads = []
        for model in (new, old):
            model.zero_grad()
            model(ids[:, :256], labels=ids[:, :256]).loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad()
        grad_diff = max((grads[0][n] - grads[1][n]).abs().max().item() / grads[1][n].abs().max().clamp(min=1e-30).item()
                        for n in grads[1])
        print(f"{name}: prefill logits max |diff| {(a - b).abs().max().item():.2e}; decode step {(step_a - step_b).abs().max().item():.2e};"
              f" largest gradient difference over the parameter's largest {grad_diff:.2e} ({len(grads[1])} parameters,"
              f" same set: {grads[0].keys() == grads[1].keys()})")

    def report(title, timings, unit, scale, base):
        print(f"\n{title}")
        base_times = timings[base]["times_s"]
        for model_name, t in timings.items():
            ratios = sorted(x / y for x, y in zip(t["times_s"], base_times))
            print(f"  {model_name:28s} {t['median_s'] * scale:8.2f} {unit} (min {t['min_s'] * scale:.2f}); over the "
                  f"{base}'s in the same round: median {statistics.median(ratios):.2f} (range {ratios[0]:.2f}-{ratios[-1]:.2f})")

    with torch.inference_mode():
        decoders = {}
        for model_name, model in models.items():
            if model_name == "floor":
                continue
            out = model(ids[:, :1024], use_cache=True)
            decoders[model_name] = _Decoder(model, getattr(out, _CACHE_FIELD), ids[:, 1023:1024], 32)
        timings = time_round_robin({n: d for n, d in decoders.items()}, repeats=args.rounds,
                                   before={n: (lambda d=d: d.warm_restart(WARM_STEPS)) for n, d in decoders.items()})
        for t in timings.values():
            for key in ("median_s", "min_s", "max_s"):
                t[key] /= 32
            t["times_s"] = [x / 32 for x in t["times_s"]]
        report("decode at 1,024 tokens of context, ms/token", timings, "ms/token", 1e3, "teacher")
        timings = time_round_robin({n: (lambda m=m: m(ids)) for n, m in models.items()}, repeats=args.rounds)
        report("prefill of 2,048 tokens (inference mode), s", timings, "s", 1, "floor")
    train = {n: m for n, m in models.items() if n != "teacher"}
    for m in train.values():
        m.train()
    timings = time_round_robin({n: (lambda m=m: _train_step(m, ids)) for n, m in train.items()}, repeats=max(args.rounds // 2, 3))
    report("training step on 2,048 tokens (forward + backward), s", timings, "s", 1, "floor")


if __name__ == "__main__":
    main()
