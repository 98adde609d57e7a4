"""Probe: one rwkv layer's parts at the training shape (batch 8 x 512, the embedded width) under bf16 autocast,
forward and backward timed apart (medians of 4 after 2 warm-ups): the whole mixer, its featurize, the token shift
(ddlerp, whose torch form trains), the recurrence's chunk form; then the chunk forms its decays take.

    python results/speed/rwkv_train_parts_probe.py
"""
import statistics, time, torch
from bench.data.teacher import EMBEDDED_TEACHER
from students.surgery import build_student, load_teacher
torch.set_num_threads(2); torch.manual_seed(0)
teacher = load_teacher(str(EMBEDDED_TEACHER))
student = build_student(teacher, "rwkv", "qkv_copy", seed=0)
mixer = student.mixers[0]
x = torch.randn(8, 512, 256) * 0.5
def fb(fn):
    ts_f, ts_b = [], []
    for i in range(6):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = time.perf_counter(); out = fn(xx); t1 = time.perf_counter()
        out = out if torch.is_tensor(out) else sum(o.float().sum() for o in out if torch.is_tensor(o))
        out.float().sum().backward(); t2 = time.perf_counter()
        if i >= 2: ts_f.append(t1 - s); ts_b.append(t2 - t1)
        mixer.zero_grad(set_to_none=True)
    return f"fwd {1e3*statistics.median(ts_f):.1f} bwd {1e3*statistics.median(ts_b):.1f}"
def feat(xx):
    f = mixer.featurize(xx, {})
    return [f.q, f.k, f.v, f.log_decay, f.context["g"]]
def mix_only(xx):
    f = mixer.featurize(xx, {})
    f2 = type(f)(**{**f.__dict__, "q": f.q.detach().requires_grad_(), "k": f.k.detach().requires_grad_(), "v": f.v.detach().requires_grad_(), "log_decay": f.log_decay.detach().requires_grad_()})
    global _t
    s = time.perf_counter(); o, _ = mixer.mix(f2, "auto", {}); _t = time.perf_counter() - s
    return o
from kernels.ddlerp import ddlerp
def dd(xx):
    return ddlerp(xx, None, mixer.maa_x, mixer.maa_w1, mixer.maa_wkvrg, mixer.maa_w2, mixer.time_decay, mixer.decay_w1, mixer.decay_w2)
print("whole mixer", fb(lambda xx: mixer(xx)[0]))
print("featurize", fb(feat))
print("ddlerp", fb(dd))
f = mixer.featurize(x, {})
q, k, v, ld = (t.detach().requires_grad_() for t in (f.q, f.k, f.v, f.log_decay))
from kernels.linear_recurrence import linear_recurrence
def rec(_):
    return linear_recurrence(q, k, v, ld, mixer.bonus, scale=f.scale)[0]
print("recurrence", fb(rec))
from kernels.linear_recurrence.chunk import chunk_forms
print(chunk_forms(f.log_decay.detach()))
