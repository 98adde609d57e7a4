"""Upper bound on fusing rwkv's read-out norm and gate into the scan: the whole prefill with the norm's pass
skipped (wrong outputs; timing only), against the model as it is, models alternating, floor before each."""
import statistics, time, torch
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.perf.heap import set_steady; set_steady()
from students.surgery import build_student
torch.set_num_threads(2)
teacher = embedded_shape_teacher(); floor = build_floor(teacher)
T = 2048
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
for name in ["rwkv", "retnet", "gla", "rwkv", "retnet"]:
    model = build_student(teacher, name, init="random", seed=0).eval()
    mixers = [m for m in model.modules() if hasattr(m, "readout") and hasattr(m, "featurize")]
    originals = [m.readout for m in mixers]
    def skip(m):
        def readout(core, f, x):
            from students.layers import merge_heads
            return m.o_proj(merge_heads(core).to(x.dtype))
        return readout
    times = {"floor": [], "as_is": [], "no_norm": []}
    with torch.no_grad():
        for r in range(25):
            for side in (["as_is", "no_norm"] if r % 2 == 0 else ["no_norm", "as_is"]):
                for m, o in zip(mixers, originals):
                    if side == "as_is":
                        m.__dict__.pop("readout", None)
                    else:
                        m.readout = skip(m)
                s = time.perf_counter(); floor(ids, use_cache=False); times["floor"].append(time.perf_counter() - s)
                s = time.perf_counter(); model(ids, use_cache=False); times[side].append(time.perf_counter() - s)
    f = statistics.median(times["floor"][2:]); a = statistics.median(times["as_is"][1:]); n = statistics.median(times["no_norm"][1:])
    print(f"{name}: floor {1e3*f:.1f} ms, as is {1e3*a:.1f} ({a/f:.3f}x), norm skipped {1e3*n:.1f} ({n/f:.3f}x), saving {1e3*(a-n):.2f} ms")
