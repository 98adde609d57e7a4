"""Mamba-2's Δ·B and D·x taken into the compiled scan (`key_scale`, `skip` of `linear_recurrence`) against the two
torch passes around it before (k = B·Δ in featurize, o + D·x in finish_core; the old code, copied here): whole fp32
prefills (batch 1, no gradient, use_cache=False), the sides alternating by round, the floor before each call
(`ab_rounds.py`); medians of the rounds; and decode (ms a token after a 1,024-token prompt, the teacher timed in the
same rounds). Both sides' logits, and their 16th decoded tokens, compared first. Then one mamba layer's mixer alone
on a 2,048-token input, 200 alternating rounds (the change's share without the rest of the model's variance).

    python results/speed/mamba_ssd_terms_ab.py [rounds] [length ...]
"""
import statistics
import sys

import torch
import torch.nn.functional as F
from ab_rounds import call_rounds, decode_sides, filled_decoder, paired, prefill_rounds, times_floor

from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from students.base import Features
from students.layers import split_heads, stacked_linear
from students.mixers.mamba import Mamba2Mixer
from students.surgery import build_student


def featurize_old(self, x, state):  # Mamba2Mixer.featurize before: Δ·B as a product of its own
    H = self.num_heads
    xBC_in = stacked_linear(x, [self.x_proj, self.B_proj, self.C_proj])
    _, B_in, C_in = xBC_in.chunk(3, dim=-1)
    xBC, conv_cache = self.conv(xBC_in, state.get("conv"))
    xs, Bs, Cs = (split_heads(t, H) for t in xBC.chunk(3, dim=-1))
    dt = F.softplus(self.dt_proj(x).float() + self.dt_bias)
    return Features(q=Cs, k=Bs * dt[..., None], v=xs, log_decay=-dt * self.A_log.float().exp(), scale=1.0,
                    context={"z": split_heads(self.z_proj(x), H)}, carry={"conv": conv_cache},
                    window_q=split_heads(C_in, H), window_k=split_heads(B_in, H))


def finish_core_old(self, o, f):  # and D·x as one of its own
    return torch.addcmul(o, self.D.float()[:, None], f.v.float())


def main():
    print(header(), "| heap", set_steady())
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    lengths = [int(a) for a in sys.argv[2:]] or [2048]
    teacher = embedded_shape_teacher()
    floor = build_floor(teacher)
    model = build_student(teacher, "mamba", init="random", seed=0).eval()
    new = Mamba2Mixer.featurize, Mamba2Mixer.finish_core

    def use(side):
        Mamba2Mixer.featurize, Mamba2Mixer.finish_core = new if side == "new" else (featurize_old, finish_core_old)

    for T in lengths:
        ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
        logits = {}
        with torch.no_grad():
            for side in ("old", "new"):
                use(side)
                logits[side] = model(ids, use_cache=False).logits
        gap = (logits["old"] - logits["new"]).abs().max().item()
        times = prefill_rounds(model, floor, ids, use, rounds)
        use("new")
        print(f"T={T}: logits max |old - new| {gap:.1e}; × floor old {times_floor(times, 'old'):.3f}, "
              f"new {times_floor(times, 'new'):.3f}; old {1e3 * statistics.median(times['old']):.1f} ms, "
              f"new {1e3 * statistics.median(times['new']):.1f} ms; {paired(times['old'], times['new'])}")
    ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_decoder = filled_decoder(teacher, ids)
        same, times = decode_sides(model, teacher_decoder, ids, use, rounds)
        print(f"decode: the 16th decoded token the same either side: {same}")
    use("new")
    mixer = next(m for m in model.modules() if isinstance(m, Mamba2Mixer))
    x = torch.randn(1, 2048, teacher.config.hidden_size, generator=torch.Generator().manual_seed(1))
    layer = call_rounds(mixer, (x,), use, 200)
    use("new")
    print(f"one mixer, 2,048 tokens: old {1e3 * statistics.median(layer['old']):.3f} ms, "
          f"new {1e3 * statistics.median(layer['new']):.3f} ms; {paired(layer['old'], layer['new'])}")
    print(f"decode ms/token after 1,024: old {1e3 * statistics.median(times['old']):.3f}, "
          f"new {1e3 * statistics.median(times['new']):.3f}, teacher {1e3 * statistics.median(times['reference']):.3f}; "
          f"{paired(times['old'], times['new'])}")


if __name__ == "__main__":
    main()
