"""Featurize / mix / read-out / MLP wall time inside whole-model prefills, mixers in one pass vs in PREFILL_BLOCK blocks.
    python results/speed/prefill_parts_probe.py retnet 16384"""
import sys, time, statistics, torch, collections, functools
import students.base
from bench.perf.throughput import embedded_shape_teacher
from students.surgery import build_student
acc = collections.defaultdict(float)
def wrap(obj, attr, key):
    inner = getattr(obj, attr)
    def timed(*a, **k):
        t = time.perf_counter(); r = inner(*a, **k); acc[key] += time.perf_counter() - t; return r
    setattr(obj, attr, timed)
name = sys.argv[1]; T = int(sys.argv[2])
teacher = embedded_shape_teacher()
m = build_student(teacher, name, init="random", seed=0).eval()
for layer in m.model.layers:
    for part in ("featurize", "mix", "readout"): wrap(layer.mixer, part, part)
    wrap(layer.mlp, "forward", "mlp")
ids = torch.randint(0, 4096, (1, T))
rec = collections.defaultdict(list)
with torch.no_grad():
    for r in range(7):
        for side, blk in (("one", 1 << 30), ("blk", 2048)):
            students.base.PREFILL_BLOCK = blk
            acc.clear(); t = time.perf_counter(); m(ids, use_cache=False); acc["total"] = time.perf_counter() - t
            for k, v in acc.items(): rec[(k, side)].append(v)
for k in ("featurize", "mix", "readout", "mlp", "total"):
    print(f"{k:10s} one {1e3*statistics.median(rec[(k,'one')][1:]):8.1f}  blocks {1e3*statistics.median(rec[(k,'blk')][1:]):8.1f} ms")
