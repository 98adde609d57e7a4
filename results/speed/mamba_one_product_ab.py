"""Mamba's input projections as one product (x, B, C, z and Δ's weights stacked; the convolution reads the first
3·H·P columns in place) against today's three (x, B, C stacked; z; Δ): one mamba layer's mixer alone on a 2,048-token
input, fp32, no gradient, 200 rounds alternating (`ab_rounds.py`), outputs compared first.

    python results/speed/mamba_one_product_ab.py [rounds]
"""
import statistics
import sys

import torch
import torch.nn.functional as F
from ab_rounds import call_rounds, paired

from bench.perf.heap import set_steady
from bench.perf.throughput import embedded_shape_teacher
from bench.provenance import header
from students.base import Features
from students.layers import split_heads, stacked_linear
from students.mixers.mamba import Mamba2Mixer
from students.surgery import build_student


def featurize_one_product(self, x, state):
    H, HP = self.num_heads, self.num_heads * self.head_dim
    projected = stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj, self.z_proj, self.dt_proj])
    xBC_in, z, dt_in = projected.split([3 * HP, HP, H], dim=-1)
    _, B_in, C_in = xBC_in.chunk(3, dim=-1)
    xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
    xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
    dt = F.softplus(dt_in.float() + self.dt_bias)
    log_decay = -dt * self.A_log.float().exp()
    return Features(q=Cs, k=Bs, v=xs, log_decay=log_decay, key_scale=dt, skip=self.D, scale=1.0,
                    context={"z": split_heads(z, H)}, carry={"conv": conv_cache},
                    window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))


def main():
    print(header(), "| heap", set_steady())
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    teacher = embedded_shape_teacher()
    model = build_student(teacher, "mamba", init="random", seed=0).eval()
    mixer = next(m for m in model.modules() if isinstance(m, Mamba2Mixer))
    sides = {"old": Mamba2Mixer.featurize, "new": featurize_one_product}

    def use(side):
        Mamba2Mixer.featurize = sides[side]

    x = torch.randn(1, 2048, teacher.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = {}
        for side in sides:
            use(side)
            outputs[side] = mixer(x)[0]
        print(f"outputs max |old - new| {(outputs['old'] - outputs['new']).abs().max().item():.1e}")
    times = call_rounds(mixer, (x,), use, rounds, sides)
    use("old")
    print(f"one mixer, 2,048 tokens: old {1e3 * statistics.median(times['old']):.3f} ms, "
          f"new {1e3 * statistics.median(times['new']):.3f} ms; {paired(times['old'], times['new'])}")


if __name__ == "__main__":
    main()
