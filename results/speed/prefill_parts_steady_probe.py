"""Featurize / mix / read-out / MLP / LM-head wall time inside whole-model prefills, steady heap, models taking turns.
    python results/speed/prefill_parts_steady_probe.py floor,mamba,rwkv 2048"""
import sys, time, statistics, torch, collections
from bench.perf.heap import set_steady
from bench.provenance import header
print(header(), '| heap', set_steady())
from bench.perf.throughput import embedded_shape_teacher, build_floor
from students.surgery import build_student
acc = collections.defaultdict(float)
def wrap(obj, attr, key):
    inner = getattr(obj, attr)
    def timed(*a, **k):
        t = time.perf_counter(); r = inner(*a, **k); acc[key] += time.perf_counter() - t; return r
    setattr(obj, attr, timed)
T = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
teacher = embedded_shape_teacher()
ids = torch.randint(0, 4096, (1, T))
models = {}
for name in sys.argv[1].split(","):
    m = build_floor(teacher) if name == "floor" else build_student(teacher, name, init="random", seed=0)
    m.eval()
    for layer in m.model.layers:
        for part in ("featurize", "mix", "readout"):
            if hasattr(layer.mixer, part): wrap(layer.mixer, part, part)
        wrap(layer.mixer, "forward", "mixer")
        wrap(layer.mlp, "forward", "mlp")
    wrap(m.lm_head, "forward", "lm_head")
    models[name] = m
rec = collections.defaultdict(list)
with torch.inference_mode():
    for r in range(9):
        for name, m in models.items():
            acc.clear(); t = time.perf_counter(); m(ids, use_cache=False); acc["total"] = time.perf_counter() - t
            for k, v in acc.items(): rec[(name, k)].append(v)
for name in models:
    print(name, "  ".join(f"{k} {1e3*statistics.median(rec[(name,k)][2:]):.2f}" for k in ("featurize", "mix", "readout", "mixer", "mlp", "lm_head", "total") if rec[(name,k)]))
