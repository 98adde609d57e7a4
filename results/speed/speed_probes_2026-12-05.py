"""Probes of 2026-12-05 (twenty-sixth session) whose numbers `speed_probes_2026-12-05.md` quotes, one function each;
run one at a time on a quiet machine (2 threads):

    python results/speed/speed_probes_2026-12-05.py PROBE [ARGUMENTS]

step_phases: a bf16 end_to_end step's wall-clock phases (teacher, student forward, loss, backward, AdamW); argument: students, e.g. retnet,gla
forward_phases: a bf16 student forward by phase (featurize, mix, readout, MLPs, norms) and its backward at 8 x 512; argument: students
elementwise: single elementwise ops (mul, silu, cast, copy) at the training shape, fp32 and bf16
products: batched (256 x 64 x 64) and dense (4096 x 256 x 768) products, fp32 against bf16
einsum: the chunk carry's decay-gradient reduction: einsum against a product and a sum
compile_mlp_norm: torch.compile of every LlamaMLP and LlamaRMSNorm: arguments: students, then eager or mlp+norm
compile_ddlerp: rwkv's token shift torch form, eager against torch.compile, one layer fwd/bwd under bf16 autocast
compile_head_norm: the read-out norm's torch form, eager against torch.compile, fwd/bwd under bf16 autocast
gdn_parts: one gated_deltanet layer's parts at the training shape under bf16 autocast (mixer, featurize, delta rule)
"""
import sys

def step_phases():
    import torch, time, statistics, sys
    from bench.data.teacher import EMBEDDED_TEACHER
    from bench.distill.loop import adamw
    from bench.distill.stages import _final_hidden
    from kernels.distill_loss import fused_distillation_loss
    from students.surgery import build_student, load_teacher
    torch.set_num_threads(2); torch.manual_seed(0)
    teacher = load_teacher(str(EMBEDDED_TEACHER)); teacher.requires_grad_(False)
    batch = torch.randint(0, 4096, (8, 512))
    for name in sys.argv[1].split(","):
        student = build_student(teacher, name, "qkv_copy", seed=0)
        opt = adamw(list(student.parameters()), 1e-6, 0.01)
        ph = {k: [] for k in ("teacher", "student fwd", "loss fwd", "backward", "optim", "total")}
        for i in range(6):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with torch.no_grad():
                    th = _final_hidden(teacher, batch)
                t1 = time.perf_counter()
                h = _final_hidden(student, batch)
                t2 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                t3 = time.perf_counter()
                loss = fused_distillation_loss(h, student.lm_head.weight, batch, teacher_hidden=th, teacher_weight=teacher.lm_head.weight, matmul_dtype=torch.bfloat16)
                loss = loss[0] if isinstance(loss, tuple) else loss
                t3b = time.perf_counter()
            opt.zero_grad(set_to_none=True); loss.backward(); t4 = time.perf_counter()
            opt.step(); t5 = time.perf_counter()
            if i >= 2:
                for k, v in zip(ph, (t1-t0, t2-t1, t3b-t3, t4-t3b, t5-t4, t5-t0)): ph[k].append(v*1e3)
        print(name, "  ".join(f"{k} {statistics.median(v):.0f}" for k, v in ph.items()))


def forward_phases():
    import collections, statistics, sys, time, torch
    from bench.data.teacher import EMBEDDED_TEACHER
    from bench.distill.stages import _final_hidden
    from students.surgery import build_student, load_teacher
    torch.set_num_threads(2); torch.manual_seed(0)
    teacher = load_teacher(str(EMBEDDED_TEACHER)); teacher.requires_grad_(False)
    batch = torch.randint(0, 4096, (8, 512))
    spent = collections.defaultdict(float)
    def timed(name, fn):
        def wrapper(*a, **k):
            s = time.perf_counter(); out = fn(*a, **k); spent[name] += time.perf_counter() - s; return out
        return wrapper
    for name in sys.argv[1].split(","):
        student = build_student(teacher, name, "qkv_copy", seed=0)
        for module in student.modules():
            kind = type(module).__name__
            if hasattr(module, "featurize") and hasattr(module, "readout"):
                for phase in ("featurize", "mix", "finish_core", "readout"):
                    setattr(module, phase, timed(phase, getattr(module, phase)))
            elif kind.endswith("MLP") or kind.endswith("RMSNorm") and "Head" not in kind:
                module.forward = timed(kind, module.forward)
        rows = collections.defaultdict(list)
        for r in range(6):
            spent.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                s = time.perf_counter(); h = _final_hidden(student, batch); tot = time.perf_counter() - s
            s = time.perf_counter(); h.float().square().mean().backward(); bw = time.perf_counter() - s
            if r >= 2:
                rows["fwd total"].append(tot); rows["backward"].append(bw)
                for k, v in spent.items(): rows[k].append(v)
                rows["rest"].append(tot - sum(spent.values()))
            student.zero_grad(set_to_none=True)
        print(name, "  ".join(f"{k} {1e3*statistics.median(v):.1f}" for k, v in rows.items()), flush=True)


def elementwise():
    import torch, time
    torch.set_num_threads(2)
    def t(fn, n=20):
        fn(); fn()
        s=time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter()-s)/n*1e3
    for dt in (torch.float32, torch.bfloat16):
        a=torch.randn(8,512,768,dtype=dt); b=torch.randn(8,512,768,dtype=dt)
        x=torch.randn(4096,256)
        print(dt, "mul %.2f ms"%t(lambda: a*b), "silu %.2f"%t(lambda: torch.nn.functional.silu(a)),
              "cast fp32->bf16 [4096,256] %.2f"%t(lambda: x.to(torch.bfloat16)), "copy same %.2f"%t(lambda: x.clone()))


def products():
    import torch, time
    torch.set_num_threads(2)
    def t(fn, n=30):
        for _ in range(3): fn()
        s=time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter()-s)/n*1e3
    for shape in [(256,64,64,64),(256,64,64,1)]:
      for dt in (torch.float32, torch.bfloat16):
        b,m,k,n=shape
        a=torch.randn(b,m,k,dtype=dt); c=torch.randn(b,k,n,dtype=dt)
        ms=t(lambda: torch.bmm(a,c))
        print(shape, dt, "bmm %.3f ms  %.0f GFLOP/s"%(ms, 2*b*m*k*n/ms/1e6))
    x=torch.randn(4096,256); w=torch.randn(768,256)
    for dt in (torch.float32, torch.bfloat16):
        xx=x.to(dt); ww=w.to(dt)
        ms=t(lambda: xx@ww.T); print("mm 4096x256x768", dt, "%.3f ms %.0f GFLOP/s"%(ms, 2*4096*256*768/ms/1e6))


def einsum():
    import torch, time
    torch.set_num_threads(2)
    a = torch.randn(8,8,4,64,64); b = torch.randn(8,8,4,64,64)
    def t(fn, n=30):
        for _ in range(3): fn()
        s=time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter()-s)/n*1e3
    print("per channel: einsum %.3f ms, product and sum %.3f ms" % (t(lambda: torch.einsum("...kv,...kv->...k", a, b)), t(lambda: (a*b).sum(-1))))
    print("per head: einsum %.3f ms, product and sum %.3f ms" % (t(lambda: torch.einsum("...kv,...kv->...", a, b)), t(lambda: (a*b).sum((-2,-1)))))


def compile_mlp_norm():
    import torch, time, statistics, sys
    from bench.data.teacher import EMBEDDED_TEACHER
    from bench.distill.loop import adamw
    from bench.distill.stages import _final_hidden
    from kernels.distill_loss import fused_distillation_loss
    from students.surgery import build_student, load_teacher
    torch.set_num_threads(2); torch.manual_seed(0)
    mode = sys.argv[2]
    teacher = load_teacher(str(EMBEDDED_TEACHER)); teacher.requires_grad_(False)
    batch = torch.randint(0, 4096, (8, 512))
    def compile_parts(model):
        for m in model.modules():
            n = type(m).__name__
            if (n == "LlamaMLP" and "mlp" in mode) or (n == "LlamaRMSNorm" and "norm" in mode):
                m.forward = torch.compile(m.forward, dynamic=False)
    for name in sys.argv[1].split(","):
        student = build_student(teacher, name, "qkv_copy", seed=0)
        if mode != "eager":
            compile_parts(teacher); compile_parts(student)
        opt = adamw(list(student.parameters()), 1e-6, 0.01)
        ph = {k: [] for k in ("teacher", "student fwd", "loss fwd", "backward", "total")}
        c0 = time.perf_counter()
        for i in range(7):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                with torch.no_grad():
                    th = _final_hidden(teacher, batch)
                t1 = time.perf_counter()
                h = _final_hidden(student, batch)
                t2 = time.perf_counter()
                loss = fused_distillation_loss(h, student.lm_head.weight, batch, teacher_hidden=th, teacher_weight=teacher.lm_head.weight, matmul_dtype=torch.bfloat16)[0]
                t3 = time.perf_counter()
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); t4 = time.perf_counter()
            if i == 0: print("first step %.1f s" % (t4 - c0), flush=True)
            if i >= 2:
                for k, v in zip(ph, (t1-t0, t2-t1, t3-t2, t4-t3, t4-t0)): ph[k].append(v*1e3)
        print(name, mode, "  ".join(f"{k} {statistics.median(v):.0f}" for k, v in ph.items()), flush=True)


def compile_ddlerp():
    import statistics, time, torch
    from bench.data.teacher import EMBEDDED_TEACHER
    from students.surgery import build_student, load_teacher
    from kernels.ddlerp.torch_form import ddlerp_torch
    torch.set_num_threads(2); torch.manual_seed(0)
    teacher = load_teacher(str(EMBEDDED_TEACHER))
    mixer = build_student(teacher, "rwkv", "qkv_copy", seed=0).mixers[0]
    x = torch.randn(8, 512, 256) * 0.5
    w = (mixer.maa_x, mixer.maa_w1, mixer.maa_wkvrg, mixer.maa_w2, mixer.time_decay, mixer.decay_w1, mixer.decay_w2)
    compiled = torch.compile(ddlerp_torch, dynamic=False)
    def run(fn):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = time.perf_counter(); st, ld = fn(xx, None, *w); t1 = time.perf_counter()
        (st.float().sum() + ld.float().sum()).backward(); t2 = time.perf_counter()
        mixer.zero_grad(set_to_none=True)
        return t1 - s, t2 - t1
    c0 = time.perf_counter(); run(compiled); print("first compiled call %.1f s" % (time.perf_counter() - c0), flush=True)
    res = {"eager": [], "compiled": []}
    for i in range(8):
        for name, fn in (("eager", ddlerp_torch), ("compiled", compiled)):
            f, b = run(fn)
            if i >= 2: res[name].append((f, b))
    for name, v in res.items():
        print(name, "fwd %.1f bwd %.1f ms" % (1e3*statistics.median(a for a, _ in v), 1e3*statistics.median(b for _, b in v)))


def compile_head_norm():
    import statistics, time, torch
    from kernels.head_norm.torch_form import head_norm_torch
    torch.set_num_threads(2); torch.manual_seed(0)
    compiled = torch.compile(head_norm_torch, dynamic=False)
    for kind in ("rms", "layer"):
        x = torch.randn(8, 512, 4, 64); g = torch.randn(8, 512, 4, 64, dtype=torch.bfloat16)
        w = torch.randn(64, requires_grad=True); b = torch.randn(64, requires_grad=True) if kind == "layer" else None
        def run(fn):
            xx = x.clone().requires_grad_(); gg = g.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                s = time.perf_counter(); y = fn(xx, w, b, gg, kind, "silu", 1e-5, None); t1 = time.perf_counter()
            y.sum().backward(); t2 = time.perf_counter()
            return t1 - s, t2 - t1
        c0 = time.perf_counter(); run(compiled); first = time.perf_counter() - c0
        res = {"eager": [], "compiled": []}
        for i in range(8):
            for name, fn in (("eager", head_norm_torch), ("compiled", compiled)):
                r = run(fn)
                if i >= 2: res[name].append(r)
        print(kind, f"first compile {first:.1f} s;", "  ".join(f"{n} fwd {1e3*statistics.median(a for a,_ in v):.1f} bwd {1e3*statistics.median(b for _,b in v):.1f}" for n, v in res.items()), flush=True)


def gdn_parts():
    import statistics, time, torch
    from bench.data.teacher import EMBEDDED_TEACHER
    from students.surgery import build_student, load_teacher
    from kernels.delta_rule import delta_rule
    torch.set_num_threads(2); torch.manual_seed(0)
    teacher = load_teacher(str(EMBEDDED_TEACHER))
    mixer = build_student(teacher, "gated_deltanet", "qkv_copy", seed=0).mixers[0]
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
        return [f.q, f.k, f.v, f.log_decay, f.beta, f.context["g"]]
    print("whole mixer", fb(lambda xx: mixer(xx)[0]))
    print("featurize", fb(feat))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = mixer.featurize(x, {})
    q, k, v, b, ld = (t.detach().requires_grad_() for t in (f.q, f.k, f.v, f.beta, f.log_decay))
    print("recurrence", fb(lambda _: delta_rule(q, k, v, b, ld, scale=f.scale)[0]))


if __name__ == '__main__':
    probe = sys.argv.pop(1)  # the probe's own arguments follow, as sys.argv[1:]
    globals()[probe]()
