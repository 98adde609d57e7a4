"""Where a student's 2,048-token fp32 prefill spends time outside products, op by op against the floor's (torch
profiler, shapes recorded, 5 forwards after 3 warm-up ones; the compiled passes of kernels/native do not appear):
per forward, each op-and-shape's calls and self time, largest first, products left out. Then gated_deltanet's β
gate alone, on the strided columns of a stacked product's output as in its featurize, and on a contiguous copy.

    python results/speed/prefill_ops_profile.py [students]
"""
import statistics
import sys

import torch
from ab_rounds import timed

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.surgery import build_student

print(header(), "| heap", set_steady())
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
ids = torch.randint(0, 4096, (1, 2048), generator=torch.Generator().manual_seed(0))
models = {"floor": build_floor(teacher)}
for name in (sys.argv[1] if len(sys.argv) > 1 else "retnet,rwkv,gated_deltanet,mamba").split(","):
    models[name] = build_student(teacher, name, init="random", seed=0).eval()
products = {"aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
for name, model in models.items():
    with torch.no_grad():
        for _ in range(3):
            model(ids, use_cache=False)
        with torch.profiler.profile(record_shapes=True) as profile:
            for _ in range(5):
                model(ids, use_cache=False)
    events = profile.key_averages(group_by_input_shape=True)
    rows = sorted(((e.key, str(e.input_shapes)[:60], e.count // 5, e.self_cpu_time_total / 5e3) for e in events
                   if e.key not in products and e.self_cpu_time_total / 5e3 > 0.05), key=lambda r: -r[3])
    total = sum(e.self_cpu_time_total for e in profile.key_averages()) / 5e3
    print(f"== {name}: all ops' self time {total:.1f} ms a forward")
    for key, shapes, calls, ms in rows[:12]:
        print(f"  {key:18} {shapes:60} x{calls:3d} {ms:.2f} ms")

projected = torch.randn(1, 2048, 4 * 256 + 8)  # gated_deltanet's q, k, v, g, beta, decay columns
beta_in = projected[..., 1024:1028]
for label, x in (("strided columns", beta_in), ("contiguous copy", beta_in.contiguous())):
    print(f"  sigmoid over (1, 2048, 4), {label}: "
          f"{1e6 * statistics.median(timed(torch.sigmoid, x) for _ in range(300)):.1f} µs alone")
