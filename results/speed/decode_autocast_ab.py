"""Decode A/B in one process: the kernels' one-token entry (autocast entered only when on)
against the previous form (autocast context always), alternating rounds."""
import contextlib, statistics, sys, time
import torch
import importlib
lr, dr = (importlib.import_module(m) for m in ("kernels.linear_recurrence", "kernels.delta_rule"))
from bench.perf.throughput import _Decoder
from students.surgery import load_teacher, build_student
from students.modeling import _CACHE_FIELD
from bench.data.teacher import EMBEDDED_TEACHER

new_off = lr.autocast_off
old_off = lambda device: torch.autocast(device.type, enabled=False)
real_cat = torch.cat

def set_variant(old: bool):
    lr.autocast_off = dr.autocast_off = old_off if old else new_off


teacher = load_teacher(str(EMBEDDED_TEACHER))
names = sys.argv[1].split(",")
ids = torch.randint(0, 4096, (1, 1024), generator=torch.Generator().manual_seed(0))
decoders = {}
with torch.inference_mode():
    for name in names:
        m = build_student(teacher, name, init="random", seed=0).eval()
        out = m(ids, use_cache=True)
        decoders[name] = _Decoder(m, getattr(out, _CACHE_FIELD), ids[:, -1:], 32)
    times = {(n, v): [] for n in names for v in ("old", "new")}
    for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 9):
        for name in names:
            for variant in (("old", "new") if r % 2 else ("new", "old")):
                set_variant(variant == "old")
                d = decoders[name]; d.warm_restart()
                t = time.perf_counter(); d(); times[name, variant].append((time.perf_counter() - t) / 32 * 1e3)
set_variant(False)
for name in names:
    o, n = statistics.median(times[name, "old"]), statistics.median(times[name, "new"])
    ratios = sorted(a / b for a, b in zip(times[name, "old"], times[name, "new"]))
    print(f"{name:16} old {o:.3f} new {n:.3f} ms/token; old/new per round median {statistics.median(ratios):.3f} "
          f"[{ratios[0]:.3f}, {ratios[-1]:.3f}]")
