"""The sigmoid decay gate as one compiled pass (`kernels.decay_gate`, native) against the torch ops metala and gla ran
before (logsigmoid, the temperature's division, and for metala −expm1: the torch form, which is that code): per
student, whole fp32 prefills (batch 1, no gradient, use_cache=False), the sides alternating by round, the floor before
each call (`ab_rounds.py`), medians of the rounds; one mixer alone on a 2,048-token input, 200 alternating rounds; and
decode (ms a token after a 1,024-token prompt, the teacher timed in the same rounds). Both sides' logits, and their
16th decoded tokens, compared first.

    python results/speed/decay_gate_ab.py [rounds] [student ...]
"""
import functools
import statistics
import sys

import torch
from ab_rounds import call_rounds, decode_sides, filled_decoder, paired, prefill_rounds, times_floor

import students.mixers.gla as gla
import students.mixers.metala as metala
from bench.perf.heap import set_steady
from bench.perf.throughput import build_floor, embedded_shape_teacher
from bench.provenance import header
from kernels.decay_gate import decay_gate
from students.surgery import build_student

MODULES = {"metala": metala, "gla": gla}
MIXERS = {"metala": metala.MetaLAMixer, "gla": gla.GLAMixer}


def use(side):
    gate = decay_gate if side == "new" else functools.partial(decay_gate, backend="torch")
    for module in MODULES.values():
        module.decay_gate = gate


def main():
    print(header(), "| heap", set_steady())
    torch.set_num_threads(2)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    names = sys.argv[2:] or list(MODULES)
    teacher = embedded_shape_teacher()
    floor = build_floor(teacher)
    for name in names:
        model = build_student(teacher, name, init="random", seed=0).eval()
        for T in (2048, 16384):
            ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
            logits = {}
            with torch.no_grad():
                for side in ("old", "new"):
                    use(side)
                    logits[side] = model(ids, use_cache=False).logits
            gap = (logits["old"] - logits["new"]).abs().max().item()
            times = prefill_rounds(model, floor, ids, use, rounds)
            print(f"{name} T={T}: logits max |old - new| {gap:.1e}; × floor old {times_floor(times, 'old'):.3f}, "
                  f"new {times_floor(times, 'new'):.3f}; old {1e3 * statistics.median(times['old']):.1f} ms, "
                  f"new {1e3 * statistics.median(times['new']):.1f} ms; {paired(times['old'], times['new'])}")
        mixer = next(m for m in model.modules() if isinstance(m, MIXERS[name]))
        x = torch.randn(1, 2048, teacher.config.hidden_size, generator=torch.Generator().manual_seed(1))
        layer = call_rounds(mixer, (x,), use, 200)
        print(f"{name} one mixer, 2,048 tokens: old {1e3 * statistics.median(layer['old']):.3f} ms, "
              f"new {1e3 * statistics.median(layer['new']):.3f} ms; {paired(layer['old'], layer['new'])}")
        ids = torch.randint(0, teacher.config.vocab_size, (1, 1024), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            teacher_decoder = filled_decoder(teacher, ids)
            same, times = decode_sides(model, teacher_decoder, ids, use, rounds)
            print(f"{name} decode: the 16th decoded token the same either side: {same}")
        print(f"{name} decode ms/token after 1,024: old {1e3 * statistics.median(times['old']):.3f}, "
              f"new {1e3 * statistics.median(times['new']):.3f}, "
              f"teacher {1e3 * statistics.median(times['reference']):.3f}; {paired(times['old'], times['new'])}")
    use("new")


if __name__ == "__main__":
    main()
