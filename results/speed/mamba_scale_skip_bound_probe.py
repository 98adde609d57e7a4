"""The most that taking Mamba-2's Δ·B and D·x into the scan could save in mamba's prefill: whole fp32 prefills
(batch 1, no gradient, use_cache=False) with both passes skipped ("new": k = B unscaled, no D skip; wrong outputs,
timing only) against the model as it is ("old"), the sides alternating by round, the floor before each call
(`ab_rounds.py`); medians of 25 rounds at 2,048 tokens.

    python results/speed/mamba_scale_skip_bound_probe.py
"""
import statistics

import torch
import torch.nn.functional as F
from ab_rounds import prefill_rounds

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from students.base import Features
from students.layers import split_heads, stacked_linear
from students.mixers.mamba import Mamba2Mixer
from students.surgery import build_student

set_steady()
torch.set_num_threads(2)
teacher = embedded_shape_teacher()
floor = build_floor(teacher)
ids = torch.randint(0, teacher.config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))
model = build_student(teacher, "mamba", init="random", seed=0).eval()
as_is = Mamba2Mixer.featurize, Mamba2Mixer.finish_core


def featurize_unscaled(self, x, state):  # as Mamba2Mixer.featurize, without the product k = B·Δ
    H = self.num_heads
    xBC_in = stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj])
    _, B_in, C_in = xBC_in.chunk(3, dim=-1)
    xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
    xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
    dt = F.softplus(self.dt_proj(x).float() + self.dt_bias)
    return Features(q=Cs, k=Bs, v=xs, log_decay=-dt * self.A_log.float().exp(), scale=1.0,
                    context={"z": split_heads(self.z_proj(x), H)}, carry={"conv": conv_cache},
                    window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))


def use(side):
    Mamba2Mixer.featurize, Mamba2Mixer.finish_core = as_is if side == "old" else (featurize_unscaled,
                                                                                   lambda self, o, f: o)


times = prefill_rounds(model, floor, ids, use, 25)
use("old")
f = statistics.median(times["floor_old"] + times["floor_new"])
a, n = statistics.median(times["old"]), statistics.median(times["new"])
print(f"mamba: floor {1e3 * f:.1f} ms, as is {1e3 * a:.1f} ({a / f:.3f}x), Δ·B and D·x skipped {1e3 * n:.1f} "
      f"({n / f:.3f}x), saving {1e3 * (a - n):.2f} ms")
