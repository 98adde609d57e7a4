"""Tried, not adopted: mamba's featurize with every projection of x as one product (x, B, C, z, Δ; as gated_deltanet's)
against the three-product form it has (x, B, C stacked; z and Δ apart), in one process: the same weights,
whole-model prefills taking turns with the floor between them, steady heap.
    python results/speed/mamba_one_product_ab.py [rounds] [length ...]"""
import statistics, sys, time, types

import torch
import torch.nn.functional as F

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.base import Features
from students.layers import split_heads, stacked_linear
from students.surgery import build_student


def one_product(self, x, state):  # the variant: students/mixers/mamba.py's featurize with z and Δ in the product
    H, HP = self.num_heads, self.num_heads * self.head_dim
    projected = stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj, self.z_proj, self.dt_proj])
    xBC_in, z, dt_in = projected.split([3 * HP, HP, H], dim=-1)
    x_in, B_in, C_in = xBC_in.chunk(3, dim=-1)
    xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
    xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
    dt = F.softplus(dt_in.float() + self.dt_bias)
    log_decay = -dt * self.A_log.float().exp()
    return Features(q=Cs, k=Bs * dt[..., None], v=xs, log_decay=log_decay, scale=1.0,
                    context={"z": split_heads(z, H)}, carry={"conv": conv_cache},
                    window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    lengths = [int(n) for n in sys.argv[2:]] or [2048, 16384]
    print(header(), "| heap", set_steady())
    teacher = embedded_shape_teacher()
    one = build_student(teacher, "mamba", init="random", seed=0).eval()
    three = build_student(teacher, "mamba", init="random", seed=0).eval()
    for layer in one.model.layers:
        layer.mixer.featurize = types.MethodType(one_product, layer.mixer)
    models = {"floor": build_floor(teacher), "three": three, "one": one}
    with torch.inference_mode():
        for T in lengths:
            ids = torch.randint(0, 4096, (1, T), generator=torch.Generator().manual_seed(T))
            a, b = one(ids, use_cache=False).logits, three(ids, use_cache=False).logits
            print(f"T = {T}: logits max |one - three| {float((a - b).abs().max()):.2e}")
            times = {name: [] for name in models}
            for _ in range(rounds):
                for name in ("floor", "three", "floor", "one"):
                    start = time.perf_counter()
                    models[name](ids, use_cache=False)
                    times[name].append(time.perf_counter() - start)
            floor = times["floor"][1::2]  # the floor call just before each student's
            for name in ("three", "one"):
                per_round = [s / f for s, f in zip(times[name], floor if name == "one" else times["floor"][0::2])]
                print(f"  {name:5s} {1e3 * statistics.median(times[name]):7.1f} ms, x floor {statistics.median(per_round):.3f}")
            ratio = [s / o for s, o in zip(times["three"], times["one"])]
            print(f"  three / one per round: median {statistics.median(ratio):.3f}, "
                  f"quartiles {statistics.quantiles(ratio, n=4)[0]:.3f}-{statistics.quantiles(ratio, n=4)[2]:.3f}")


if __name__ == "__main__":
    main()
