"""Where rwkv's fp32 prefill goes beyond the floor's (batch 1, no gradient, use_cache=False, as bench.throughput).

    python results/speed/rwkv_prefill_parts_probe.py whole 2048    # whole-model prefills of the floor and rwkv,
                                                                   # alternating, part by part (wall-clock wrappers)
    python results/speed/rwkv_prefill_parts_probe.py ddlerp 2048   # one layer's token shift (kernels/ddlerp's
                                                                   # compiled pass) with parts of it skipped
    python results/speed/rwkv_prefill_parts_probe.py scan 2048     # one layer's scan alone (4 heads of 64)
    python results/speed/rwkv_prefill_parts_probe.py faults 2048   # whole prefills of the floor and rwkv,
                                                                   # alternating: time and minor page faults a call
    (`faults` with and without a steady heap: MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TOP_PAD_=268435456 in the environment)

`ddlerp` builds a copy of `kernels/native` whose ddlerp pass skips, by a bit mask set per call, its W1 product,
its five W2 products, its two decay products or its elementwise work (tanh, the streams' lerps, the decay's exp):
a skipped part's time is the full pass's minus that line's. The copy's outputs are meaningless; only times are read.
"""
import collections
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import kernels.native as native
from bench.provenance import machine
from kernels.chunking import DENORMALS

ROUNDS = 15


def medians(calls: dict, rounds: int = ROUNDS, skip: int = 2) -> dict:
    times = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t[skip:]) for key, t in times.items()}


def whole(T: int) -> None:
    import students.mixers.rwkv as rwkv_module
    from bench.perf.throughput import build_floor, embedded_shape_teacher
    from students.surgery import build_student

    spent = collections.defaultdict(float)

    def timed(fn, key):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            return out
        return call

    teacher = embedded_shape_teacher()
    models = {"floor": build_floor(teacher), "rwkv": build_student(teacher, "rwkv", init="random", seed=0).eval()}
    rwkv_module.ddlerp = timed(rwkv_module.ddlerp, "token shift (ddlerp)")
    rwkv_module.batched_linear = timed(rwkv_module.batched_linear, "k, v, r, g projections")
    for name, model in models.items():
        for layer in model.model.layers:
            mixer = layer.mixer
            if name == "rwkv":
                mixer.mix = timed(mixer.mix, "scan")
                mixer.group_norm.forward = timed(mixer.group_norm.forward, "read-out norm and gate")
                mixer.o_proj.forward = timed(mixer.o_proj.forward, "o projection")
            mixer.forward = timed(mixer.forward, "mixer")
            layer.mlp.forward = timed(layer.mlp.forward, "MLP")
        model.lm_head.forward = timed(model.lm_head.forward, "lm_head")
    ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    record = collections.defaultdict(list)
    with torch.no_grad():
        for _ in range(ROUNDS):
            for name, model in models.items():
                spent.clear()
                start = time.perf_counter()
                model(ids, use_cache=False)
                spent["total"] = time.perf_counter() - start
                for key, seconds in spent.items():
                    record[(name, key)].append(seconds)
    for name in models:
        print(f"  {name}")
        for (model_name, key), seconds in record.items():
            if model_name == name:
                print(f"    {key:24s} {1e3 * statistics.median(seconds[2:]):8.2f} ms")
    ratio = statistics.median(r / f for r, f in zip(record[("rwkv", "total")][2:], record[("floor", "total")][2:]))
    print(f"  rwkv / floor, median of the rounds: {ratio:.3f}")


def faults(T: int) -> None:
    from bench.perf.throughput import build_floor, embedded_shape_teacher
    from students.surgery import build_student
    teacher = embedded_shape_teacher()
    models = {"floor": build_floor(teacher), "rwkv": build_student(teacher, "rwkv", init="random", seed=0).eval()}
    ids = torch.randint(0, teacher.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    record = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(ROUNDS):
            for name, model in models.items():
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                model(ids, use_cache=False)
                record[name].append((time.perf_counter() - start,
                                     resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
    heap = {key: os.environ[key] for key in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
            if key in os.environ}
    print(f"  glibc settings: {heap or 'defaults'}")
    for name, calls in record.items():
        print(f"    {name:6s} {1e3 * statistics.median(s for s, _ in calls[2:]):7.1f} ms, "
              f"{statistics.median(f for _, f in calls[2:]):8.0f} minor faults a call")
    ratio = statistics.median(r[0] / f[0] for r, f in zip(record["rwkv"][2:], record["floor"][2:]))
    print(f"    rwkv / floor, median of the rounds: {ratio:.3f}")


PARTS = {0: "full pass", 1: "without the W1 product", 2: "without the five W2 products",
         4: "without the two decay products", 7: "without any product", 8: "without the elementwise work",
         15: "nothing (allocation, loops)"}


def skipping_extension():
    folder = Path(tempfile.mkdtemp())
    sequence = (Path(native.__file__).parent / "sequence_forward.cpp").read_text()
    step = (Path(native.__file__).parent / "recurrent_step.cpp").read_text()
    head, _, tail = sequence.partition("std::vector<Tensor> ddlerp(const Tensor& x_in,")
    body, marker, rest = tail.partition("return {streams, log_decay};")
    edits = [("gemm(n, 5 * R, D, mixed.data()", 1), ("map_inplace(mix.data()", 8), ("gemm(n, D, R, mix.data()", 2),
             ("for (int64_t i = 0; i < n; ++i)\n          for", 8), ("gemm(n, Rd, D, mixed.data()", 4),
             ("map_inplace(hidden.data()", 8), ("gemm(n, E, Rd, hidden.data()", 4),
             ("for (int64_t i = 0; i < n; ++i) {\n        float* row", 8)]
    for text, bit in edits:
        assert body.count(text) == 1, f"the ddlerp pass changed: {text!r} not found once"
        body = body.replace(text, f"if (!(skip_parts & {bit})) {text}")
    sequence = (head + "int64_t skip_parts = 0;\nvoid set_skip(int64_t bits) { skip_parts = bits; }\n"
                "std::vector<Tensor> ddlerp(const Tensor& x_in," + body + marker + rest)
    step = step.replace("PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {",
                        "void set_skip(int64_t bits);\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
                        "  m.def(\"set_skip\", &set_skip);")
    (folder / "sequence_forward.cpp").write_text(sequence)
    (folder / "recurrent_step.cpp").write_text(step)
    from torch.utils.cpp_extension import load
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return load(f"ddlerp_skip_parts_{isa}", [str(folder / "recurrent_step.cpp"), str(folder / "sequence_forward.cpp")],
                extra_cflags=["-O3", "-fopenmp", *native.ISA_FLAGS.get(isa, [])], extra_ldflags=["-fopenmp"])


def ddlerp(T: int) -> None:
    from students.base import MixerConfig
    from students.mixers.rwkv import RWKV6Mixer
    extension = skipping_extension()
    torch.manual_seed(0)
    mixer = RWKV6Mixer(MixerConfig(hidden_size=256, num_heads=4, head_dim=64, num_layers=4, layer_idx=1)).eval()
    weights = [p.detach() for p in (mixer.maa_x, mixer.maa_w1, mixer.maa_wkvrg, mixer.maa_w2, mixer.time_decay,
                                    mixer.decay_w1, mixer.decay_w2)]
    x = torch.randn(1, T, 256)

    def call(bits):
        extension.set_skip(bits)
        extension.ddlerp(x, None, *weights)
    times = medians({bits: (lambda bits=bits: call(bits)) for bits in PARTS}, rounds=30, skip=3)
    for bits, label in PARTS.items():
        print(f"    {label:32s} {1e3 * times[bits]:7.2f} ms")


def scan(T: int) -> None:
    compiled = native.module()
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, T, 4, 64) * 0.3 for _ in range(3))
    log_decay = -torch.exp(torch.randn(1, T, 4, 64) - 2)
    bonus = torch.randn(4, 64) * 0.1
    times = medians({"scan": lambda: compiled.linear_scan(q, k, v, log_decay, bonus, 1.0, None, DENORMALS.exp_floor)},
                    rounds=30, skip=3)
    print(f"    per-channel decay and bonus, 4 heads of 64: {1e3 * times['scan']:.2f} ms")


if __name__ == "__main__":
    what, length = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    info = machine()
    print(f"# {what} {length}: {info.get('device_name')} {info.get('cpu_capability')}, torch {torch.__version__}, "
          f"commit {info.get('commit')}, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    {"whole": whole, "ddlerp": ddlerp, "scan": scan, "faults": faults}[what](length)
