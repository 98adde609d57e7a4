"""The most that fusing a mixer's read-out norm and gate into its scan could save: whole fp32 prefills (batch 1, no
gradient, use_cache=False) with the norm and gate skipped ("new": wrong outputs; timing only) against the model as
it is ("old"), the sides alternating by round, the floor before each call (`ab_rounds.py`); medians of 25 rounds.
Students in turn (the first two again at the end: the saving is a few per cent, and runs disagree by that much).

    python results/speed/readout_bound_probe.py
"""
import statistics

import torch
from ab_rounds import prefill_rounds

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from students.layers import merge_heads
from students.surgery import build_student

set_steady()
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
floor = build_floor(teacher)
ids = torch.randint(0, teacher.config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))


def without_norm(mixer):
    return lambda core, f, x: mixer.o_proj(merge_heads(core).to(x.dtype))


for name in ["rwkv", "retnet", "gla", "rwkv", "retnet"]:
    model = build_student(teacher, name, init="random", seed=0).eval()
    mixers = [m for m in model.modules() if hasattr(m, "readout") and hasattr(m, "featurize")]

    def use(side, mixers=mixers):
        for mixer in mixers:
            if side == "old":
                mixer.__dict__.pop("readout", None)  # the class's readout again
            else:
                mixer.readout = without_norm(mixer)

    times = prefill_rounds(model, floor, ids, use, 25)
    f = statistics.median(times["floor_old"] + times["floor_new"])
    a, n = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"{name}: floor {1e3 * f:.1f} ms, as is {1e3 * a:.1f} ({a / f:.3f}x), norm skipped {1e3 * n:.1f} "
          f"({n / f:.3f}x), saving {1e3 * (a - n):.2f} ms")
