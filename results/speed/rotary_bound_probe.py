"""Upper bound on a one-pass rotary for retnet's prefill: the model with rotary skipped (wrong outputs; timing
only) against the model as it is, alternating, floor before each; plus the torch form alone at the prefill's shape."""
import statistics, time, torch
from bench.perf.heap import set_steady; set_steady()
from bench.perf.throughput import build_floor, embedded_shape_teacher
from students.surgery import build_student
import students.layers as layers
torch.set_num_threads(2)
teacher = embedded_shape_teacher(); floor = build_floor(teacher)
T = 2048
ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
x = torch.randn(1, T, 256).view(1, T, 4, 64)
cos, sin = layers.rotary_angles(layers.rope_inv_freq(64, 10000.0), 0, T, "cpu")
from kernels.rotary import rotary
with torch.no_grad():
    ts = []
    for _ in range(50):
        s = time.perf_counter(); rotary(x, cos, sin); ts.append(time.perf_counter() - s)
print(f"torch rotary alone (1, {T}, 4, 64): {1e3*statistics.median(ts[5:]):.3f} ms")
model = build_student(teacher, "retnet", init="random", seed=0).eval()
mixers = [m for m in model.modules() if hasattr(m, "rotary") and hasattr(m, "featurize")]
real = type(mixers[0].rotary).__call__
times = {"floor": [], "as_is": [], "skipped": []}
with torch.no_grad():
    for r in range(25):
        for side in (["as_is", "skipped"] if r % 2 == 0 else ["skipped", "as_is"]):
            type(mixers[0].rotary).__call__ = real if side == "as_is" else (lambda self, x, offset: x)
            s = time.perf_counter(); floor(ids, use_cache=False); times["floor"].append(time.perf_counter() - s)
            s = time.perf_counter(); model(ids, use_cache=False); times[side].append(time.perf_counter() - s)
f = statistics.median(times["floor"][2:]); a = statistics.median(times["as_is"][1:]); n = statistics.median(times["skipped"][1:])
print(f"retnet: floor {1e3*f:.1f} ms, as is {1e3*a:.1f} ({a/f:.3f}x), rotary skipped {1e3*n:.1f} ({n/f:.3f}x), saving {1e3*(a-n):.2f} ms")
