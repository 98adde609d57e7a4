"""Minor page faults and wall time of whole-model prefills, mixers in one pass vs in PREFILL_BLOCK blocks, one process.
    python results/speed/prefill_page_faults_probe.py retnet 16384      (or: floor 16384)"""
import sys, time, resource, statistics, torch
import students.base
from bench.perf.throughput import embedded_shape_teacher, build_floor
from students.surgery import build_student
name = sys.argv[1]; T = int(sys.argv[2])
teacher = embedded_shape_teacher()
m = build_student(teacher, name, init="random", seed=0).eval() if name != "floor" else build_floor(teacher)
ids = torch.randint(0, 4096, (1, T))
res = {}
with torch.no_grad():
    for r in range(5):
        for side, blk in (("one", 1 << 30), ("blk", 2048)):
            students.base.PREFILL_BLOCK = blk
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = time.perf_counter()
            m(ids, use_cache=False)
            res.setdefault(side, []).append((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
for side, v in res.items(): print(side, [(round(a*1e3), b) for a, b in v[1:]])
