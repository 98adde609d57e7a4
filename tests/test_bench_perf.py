"""bench.perf. Throughput harness: finite positive numbers for every model, O(1) student decode state, a growing
teacher KV cache, the JSON schema (valid and invalid documents), one-line CLI errors with exit code 2. Kernel
benchmarks: each backend checked before it is timed, no speed-up printed for a wrong one; the A/B tool loads the
other checkout's own code."""
import copy
import json
import math
import platform
import re
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import students
from bench.perf import distill_loss_bench, fused_ops_bench, heap, mixer_loss_bench, throughput
from bench.perf import kernel_bench as bench_kernels
from kernels import native
from kernels.linear_recurrence import BACKENDS, linear_recurrence_chunk

LENGTHS = (16, 40)
CONTEXTS = (8, 48)  # decode at two contexts: recurrent state must not grow, a KV cache must
FAST = dict(repeats=1, dtype=torch.float32, decode_steps=2, train_lengths=(16,))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes run fastest on one thread, and CI machines are often shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=256,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("throughput") / "teacher"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return students.load_teacher(str(teacher_dir))


@pytest.fixture(scope="module")
def sweep(teacher):
    student = students.build_student(teacher, "gla", init="random", seed=0)
    return throughput.short_sweep(teacher, student, lengths=(16, 32), decode_contexts=(8, 24), repeats=1)


def assert_finite_positive(result: dict):
    for section, keys in (("prefill", ("median_s", "min_s", "max_s", "tokens_per_s")),
                          ("train", ("median_s", "min_s", "max_s", "tokens_per_s")),
                          ("decode", ("ms_per_token", "min_ms", "max_ms"))):
        assert result[section], f"{section}: nothing measured"
        for length, entry in result[section].items():
            for key in keys:
                value = entry[key]
                assert math.isfinite(value) and value > 0, f"{section}[{length}].{key} = {value}"


@pytest.mark.parametrize("name", students.available())
def test_every_student_measures_finite_positive_and_decodes_in_constant_state(teacher, name):
    student = students.build_student(teacher, name, init="random", seed=0)
    result = throughput.measure(student, "student", LENGTHS, CONTEXTS, **FAST)
    assert_finite_positive(result)
    assert set(result["prefill"]) == {"16", "40"} and set(result["decode"]) == {"8", "48"}
    assert result["backend"]["requested"] == "auto" and result["machine"]["commit"]
    short, long = result["decode"]["8"], result["decode"]["48"]
    if name == students.available()[-1]:  # the softmax control keeps a KV cache: it grows with the context
        assert long["state_bytes"] == 6 * short["state_bytes"] > 0
    else:
        # the compiled pass without a gradient to record (kernels/native), where it can be built
        assert result["backend"]["prefill"].endswith(":native" if native.module() is not None else ":chunk")
        assert long["state_bytes"] == short["state_bytes"] > 0, "a recurrent student's state must not grow"
        assert long["mixer_state_size_bytes"] == short["mixer_state_size_bytes"] > 0
    assert all(p.grad is None for p in student.parameters())


def test_teacher_kv_cache_grows_and_floor_has_no_state(teacher):
    result = throughput.measure(teacher, "teacher", LENGTHS, CONTEXTS, **FAST)
    assert_finite_positive(result)
    assert result["backend"]["prefill"] == "sdpa"
    # KV cache per sequence: layers × (k, v) × kv heads × head dim × 4 bytes per token
    assert result["decode"]["48"]["state_bytes"] == 2 * 2 * 2 * 16 * 4 * 48
    assert result["decode"]["48"]["state_bytes"] == 6 * result["decode"]["8"]["state_bytes"]
    floor = throughput.build_floor(teacher)
    floor_result = throughput.measure(floor, "floor", LENGTHS, CONTEXTS, **FAST)
    assert_finite_positive(floor_result)
    assert all(entry["state_bytes"] == 0 for entry in floor_result["decode"].values())
    assert all(isinstance(m, throughput.FloorMixer) for m in floor.mixers)
    assert "floor" not in students.available()


def test_prefill_flops_count_every_product_and_causal_cpu_attention_once(teacher):
    """By hand for the test teacher (2 layers, width 64, 4 heads of 16, 2 kv heads, MLP 96, vocab 128): the floor
    is its linear layers; the teacher adds the causal half of its attention's score and value products."""
    T, D, HK, KV, F, V, layers = 40, 64, 64, 32, 96, 128, 2
    ids = torch.randint(0, V, (1, T))
    mlp, head = 3 * 2 * T * D * F, 2 * T * D * V
    floor = layers * (4 * 2 * T * D * HK + mlp) + head  # the floor's q/k/v/o are a student's: H·K wide each
    teacher_projections = layers * (2 * 2 * T * D * HK + 2 * 2 * T * D * KV + mlp) + head
    attention = layers * 2 * (2 * T * T * HK) // 2
    assert throughput.prefill_flops(throughput.build_floor(teacher), ids) == floor
    assert throughput.prefill_flops(teacher, ids) == teacher_projections + attention
    gla = students.build_student(teacher, "gla", init="random", seed=0)
    assert throughput.prefill_flops(gla, ids) > floor  # its gates and chunked products come on top
    # a generation's prompt (`--prefill-logits last`): the LM head over one position, in every kind of model
    assert throughput.prefill_flops(throughput.build_floor(teacher), ids, "last") == floor - head + 2 * D * V
    assert throughput.prefill_flops(teacher, ids, "last") == teacher_projections + attention - head + 2 * D * V
    assert throughput.prefill_flops(gla, ids, "last") == throughput.prefill_flops(gla, ids) - head + 2 * D * V


def test_a_prefill_of_the_last_logits_is_timed_and_recorded_as_such(teacher):
    """`prefill_logits="last"` times the same forward with one position's logits: every model still measured,
    and the report's FLOP count says which forward it timed; an unknown value is refused before any timing."""
    models = {"floor": (throughput.build_floor(teacher), "floor"), "teacher": (teacher, "teacher")}
    results = throughput.measure_side_by_side(models, (16,), (8,), prefill_logits="last", **FAST)
    everything = throughput.measure_side_by_side(models, (16,), (8,), **FAST)
    for name in models:
        assert results[name]["prefill"]["16"]["median_s"] > 0
        assert results[name]["prefill"]["16"]["matmul_flops"] < everything[name]["prefill"]["16"]["matmul_flops"]
    with pytest.raises(ValueError, match="prefill_logits must be one of all, last, got 'first'"):
        throughput.measure_side_by_side(models, (16,), (8,), prefill_logits="first", **FAST)


def test_round_robin_timing_takes_turns_and_runs_before_outside_the_timing():
    from bench.perf.timing import time_round_robin

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    timings = time_round_robin(calls, repeats=3, warmup=1, before={"b": lambda: order.append("reset b")})
    forward, backward = ["a", "reset b", "b", "c"], ["c", "reset b", "b", "a"]
    assert order == (forward + backward) * 2  # one warm-up round, then three timed ones, every other reversed
    assert set(timings) == {"a", "b", "c"} and all(t["repeats"] == 3 for t in timings.values())
    assert all(0 <= t["min_s"] <= t["median_s"] <= t["max_s"] for t in timings.values())


def test_an_anchored_round_robin_runs_the_anchor_between_every_two_calls_and_divides_by_its_neighbours(monkeypatch):
    """With an anchor, each other call's `anchor_times_s` is the mean of the anchor's runs right before and after
    it (a drifting machine: the anchor gets slower run by run), and its ratio to the anchor is read from them."""
    import types

    import bench.perf.timing as timing
    from bench.perf.ratios import paired_ratio, per_round_ratios

    clock, order, anchor_runs = [0.0], [], []

    def anchor_call():
        order.append("x")
        anchor_runs.append(1.0 + len(anchor_runs))  # 1, 2, 3, … seconds: a machine slowing down
        clock[0] += anchor_runs[-1]

    def call(name, seconds):
        def run():
            order.append(name)
            clock[0] += seconds
        return run

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = {"x": anchor_call, "a": call("a", 10.0), "b": call("b", 20.0)}
    timings = timing.time_round_robin(calls, repeats=2, warmup=1, anchor="x")
    assert order == ["x", "a", "x", "b", "x"] + ["x", "b", "x", "a", "x"] + ["x", "a", "x", "b", "x"]
    # timed rounds: anchor runs 4..6 (b between 4 and 5, a between 5 and 6), then 7..9 (a: 7/8, b: 8/9)
    assert timings["a"]["anchor_times_s"] == [5.5, 7.5] and timings["b"]["anchor_times_s"] == [4.5, 8.5]
    assert timings["x"]["anchor"] is True and timings["x"]["times_s"] == [5.0, 8.0]  # per-round medians
    assert per_round_ratios(timings["a"], timings["x"]) == [10.0 / 5.5, 10.0 / 7.5]
    assert paired_ratio(timings["x"], timings["b"]) == pytest.approx((4.5 / 20 + 8.5 / 20) / 2)
    assert "anchor_times_s" not in timings["x"] and "anchor" not in timings["a"]
    # decode's verdicts read the anchor's neighbouring runs too: 2.0 ms against 2.5 is faster, whatever the round's 1.0
    from bench.perf.ratios import judge
    student = {"ms_per_token": 2.0, "times_ms": [2.0, 2.0], "anchor_times_ms": [2.5, 2.5]}
    assert judge(student, {"ms_per_token": 1.0, "times_ms": [1.0, 1.0], "anchor": True}, 1.0, "ms_per_token") is True
    assert judge(student, {"ms_per_token": 1.0, "times_ms": [1.0, 1.0]}, 1.0, "ms_per_token") is False
    with pytest.raises(ValueError, match="anchor 'y' is not one of the calls \\('x', 'a', 'b'\\)"):
        timing.time_round_robin(calls, anchor="y")


def test_models_measured_side_by_side_report_as_when_measured_alone(teacher):
    student = students.build_student(teacher, "gla", init="random", seed=0)
    floor = throughput.build_floor(teacher)
    together = throughput.measure_side_by_side({"gla": (student, "student"), "teacher": (teacher, "teacher"),
                                                "floor": (floor, "floor")}, LENGTHS, CONTEXTS, **FAST)
    alone = throughput.measure(student, "student", LENGTHS, CONTEXTS, **FAST)
    assert list(together) == ["gla", "teacher", "floor"]
    for result in together.values():
        assert_finite_positive(result)
    for section in ("prefill", "train", "decode"):
        assert set(together["gla"][section]) == set(alone[section])
        # the anchors' runs either side of each call: the floor's in prefill, the teacher's at 8 tokens in decode
        extra = {"prefill": {"anchor_times_s"}, "train": set(), "decode": {"anchor_times_ms"}}[section]
        for length, entry in alone[section].items():
            assert set(together["gla"][section][length]) == set(entry) | extra
    assert all(e.get("anchor") is True for e in together["floor"]["prefill"].values())
    assert [e.get("anchor") for e in together["teacher"]["decode"].values()] == [True] + [None] * (len(CONTEXTS) - 1)
    assert "anchor" not in together["floor"]["decode"][str(CONTEXTS[0])]
    assert [e["state_bytes"] for e in together["gla"]["decode"].values()] == \
        [e["state_bytes"] for e in alone["decode"].values()]
    assert together["teacher"]["decode"]["48"]["state_bytes"] == 6 * together["teacher"]["decode"]["8"]["state_bytes"]


def test_each_block_runs_a_model_once_untimed_then_only_the_timed_repeats(teacher):
    """The memory call is the warm-up: prefill and training run 1 + repeats calls per length (plus the FLOP count's
    one prefill), decode 1 + repeats calls of `decode_steps` tokens per context, each timed call after its warm
    restart's few untimed steps. A second warm-up round would cost every run's throughput sweep a call per block."""
    student = students.build_student(teacher, "gla", init="random", seed=0)
    calls = []  # the length of every forward call's input

    def count(module, args, kwargs):
        calls.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[1])

    student.register_forward_pre_hook(count, with_kwargs=True)
    repeats, steps = 3, 2
    throughput.measure(student, "student", (16,), (8,), repeats=repeats, dtype=torch.float32, decode_steps=steps,
                       train_lengths=(24,))
    assert calls.count(16) == 1 + repeats + 1  # memory call, timed calls, FLOP count
    assert calls.count(24) == 1 + repeats  # training: memory call, timed calls
    assert calls.count(8) == 1  # the cache filled to the context once
    single = calls.count(1)
    assert single == (1 + repeats) * steps + repeats * throughput.WARM_STEPS, single


@pytest.mark.parametrize("name", ["teacher", "gla", "attention", "hybrid"])
def test_a_rewound_cache_decodes_the_same_tokens_from_the_same_context(teacher, name):
    """Timed decode calls restart from context N: after `rewinder`'s function the same steps give the same
    logits and the cache is back to N tokens (a student's states, a hybrid's KV, transformers' cache)."""
    model = teacher if name == "teacher" else students.build_student(
        teacher, "gla" if name == "hybrid" else name, init="random", seed=0,
        **({"keep_attention": [0]} if name == "hybrid" else {}))
    field = throughput._CACHE_FIELD
    with torch.no_grad():
        cache = getattr(model(torch.randint(0, 128, (1, 10)), use_cache=True), field)
        rewind = throughput.rewinder(cache)

        def three_steps():
            nonlocal cache
            cache, token, logits = rewind(), torch.tensor([[3]]), []
            for _ in range(3):
                output = model(token, use_cache=True, **{field: cache})
                cache, token = getattr(output, field), output.logits[:, -1:].argmax(-1)
                logits.append(output.logits)
            return torch.cat(logits, 1), cache.get_seq_length()

        first, length = three_steps()
        again, _ = three_steps()
    assert length == 13 and torch.equal(first, again)
    assert rewind().get_seq_length() == 10


def test_floor_does_no_token_mixing(teacher):
    floor = throughput.build_floor(teacher)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        full = floor(ids).logits
        changed = ids.clone()
        changed[0, 3] = (ids[0, 3] + 1) % 128
        other = floor(changed).logits
    assert torch.equal(full[0, :3], other[0, :3]) and torch.equal(full[0, 4:], other[0, 4:])


def test_short_sweep_is_json_and_passes_the_schema(sweep):
    document = json.loads(json.dumps(sweep))
    assert document == sweep, "short_sweep must be JSON-able without changing on the round trip"
    throughput.validate(document)
    for key in ("prefill_tokens_per_s", "train_tokens_per_s", "decode_ms_per_token"):
        assert set(sweep[key]) == {"student", "teacher", "floor"}
    assert set(sweep["prefill_tokens_per_s"]["teacher"]) == set(sweep["train_tokens_per_s"]["student"]) == {"16", "32"}
    assert set(sweep["decode_ms_per_token"]["student"]) == {"8", "24"}
    assert sweep["state_bytes_per_sequence"]["8"] == sweep["state_bytes_per_sequence"]["24"] > 0
    assert sweep["kv_cache_bytes_per_sequence"]["24"] == 3 * sweep["kv_cache_bytes_per_sequence"]["8"]
    assert {"device", "torch", "commit", "torch_threads"} <= set(sweep["machine"])
    # auto: a steady heap where glibc runs, for the rest of the process
    assert sweep["heap"] == heap.resolve("auto") == ("steady" if heap.applied() else "default")
    assert sweep["mallopt"] == heap.applied()


@pytest.mark.parametrize("corrupt, where", [
    (lambda d: d.pop("kv_cache_bytes_per_sequence"), "missing key 'kv_cache_bytes_per_sequence'"),
    (lambda d: d["prefill_tokens_per_s"]["student"].update({"16": float("nan")}), r"\$.prefill_tokens_per_s.student\[16\]"),
    (lambda d: d["decode_ms_per_token"]["teacher"].update({"8": -1.0}), r"\$.decode_ms_per_token.teacher\[8\]"),
    (lambda d: d["train_tokens_per_s"]["student"].update({"zero": 5.0}), "length key 'zero'"),
    (lambda d: d["details"]["floor"]["prefill"]["16"].pop("tokens_per_s"), r"\$.details.floor.prefill\[16\].tokens_per_s"),
    (lambda d: d["details"]["student"]["decode"].update({"8": 3.0}), r"\$.details.student.decode\[8\]: expected an object"),
    (lambda d: d["machine"].pop("commit"), "missing key 'commit'"),
    (lambda d: d.update(schema="throughput/0"), "unknown schema"),
    (lambda d: d.update(heap="jemalloc"), r"\$.heap: expected 'steady' or 'default'"),
], ids=["missing-key", "nan", "negative", "bad-length", "nested-missing", "not-an-object", "no-commit", "schema",
        "heap"])
def test_invalid_documents_are_rejected(sweep, corrupt, where):
    document = copy.deepcopy(sweep)
    corrupt(document)
    with pytest.raises(ValueError, match=where):
        throughput.validate(document)


@pytest.mark.slow
def test_cli_writes_a_valid_report_with_floor_teacher_and_student(teacher_dir, tmp_path, capsys):
    out = tmp_path / "throughput.json"
    code = throughput.main(["--student", "retnet", "--teacher", str(teacher_dir), "--lengths", "16,32",
                            "--train-lengths", "16", "--decode-contexts", "8,24", "--repeats", "1", "--decode-steps", "2",
                            "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    throughput.validate(report)
    steady = heap.resolve("auto") == "steady"  # the default: a steady heap where glibc runs
    assert report["settings"]["heap"] == ("steady" if steady else "default")
    assert report["settings"]["mallopt"] == (heap.applied() if steady else {}) and bool(heap.applied()) == steady
    assert ("free pages released first" in report["models"]["retnet"]["memory_source"]) == steady
    assert set(report["models"]) == {"floor", "teacher", "retnet"}
    assert report["teacher"]["attn_implementation"] == "sdpa"
    assert report["ratios"]["teacher_prefill_vs_best_student"]["best_student"] == "retnet"
    assert set(report["ratios"]["prefill_vs_floor"]["retnet"]) == {"16", "32"}
    assert report["ratios"]["prefill_flops_vs_floor"]["retnet"]["32"] > 1  # the recurrence's products on top
    assert "prefill time / floor" in capsys.readouterr().out
    assert report["activity"]["source"] in ("/proc/stat", None)
    with pytest.raises(ValueError, match=r"\$\.activity"):
        throughput.validate({**report, "activity": {**report["activity"], "source": "x", "cpus": 2, "others_share": 7}})


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_steady_heap_is_set_in_glibc_and_recorded():
    """In a fresh interpreter (mallopt changes the whole process): glibc takes the steady settings, the process
    records them for the reports, freed blocks stay resident, and `release_free` gives them back."""
    script = ("from bench.perf.heap import applied, release_free, set_steady\n"
              "def resident():\n"
              "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) << 10\n"
              "assert applied() == {}\n"
              "assert set_steady() == applied() and applied()['M_MMAP_THRESHOLD'] in (1 << 30, 32 << 20)\n"
              "before = resident()\n"
              "blocks = [bytearray(8 << 20) for _ in range(12)]\n"  # 96 MiB from the heap, pages touched
              "del blocks\n"
              "kept = resident() - before\n"
              "release_free()\n"
              "print(kept >> 20, (resident() - before) >> 20)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    kept, released = map(int, done.stdout.split())
    assert kept >= 90 and released < 16  # freed blocks stay resident until released


def test_a_glibc_that_refuses_a_1_gib_threshold_gets_the_classic_32_mib(monkeypatch):
    calls = []

    class OlderGlibc:  # mallopt as a glibc that enforces DEFAULT_MMAP_THRESHOLD_MAX: nothing is really set
        @staticmethod
        def mallopt(parameter, value):
            calls.append((parameter, value))
            return 0 if parameter == heap.MALLOPT_PARAMETERS["M_MMAP_THRESHOLD"] and value > 32 << 20 else 1

    monkeypatch.setattr(heap, "glibc", lambda: True)
    monkeypatch.setattr(heap, "_libc", OlderGlibc)
    monkeypatch.setattr(heap, "_set", {})
    assert heap.set_steady() == {**heap.STEADY, "M_MMAP_THRESHOLD": 32 << 20} == heap.applied()
    assert calls[0] == (-3, 1 << 30) and calls[1] == (-3, 32 << 20)


def test_use_reports_the_heap_the_process_runs_on(monkeypatch):
    class AnyGlibc:  # mallopt as glibc 2.36: every value taken
        @staticmethod
        def mallopt(parameter, value):
            return 1

    monkeypatch.setattr(heap, "glibc", lambda: True)
    monkeypatch.setattr(heap, "_libc", AnyGlibc)
    monkeypatch.setattr(heap, "_set", {})
    assert heap.use("default") == ("default", {})
    assert heap.use("auto") == ("steady", heap.STEADY)
    assert heap.use("default") == ("steady", heap.STEADY)  # set once, it stays for the process


def test_the_steady_heap_elsewhere_is_an_error_naming_the_fix_and_auto_leaves_the_heap(monkeypatch):
    before = heap.applied()
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("", ""))
    with pytest.raises(RuntimeError, match="needs glibc's mallopt .*run with --heap default"):
        heap.set_heap({"M_TOP_PAD": 1 << 20})
    assert heap.applied() == before  # nothing recorded as set
    assert heap.resolve("auto") == "default" and heap.resolve("steady") == "steady"
    with pytest.raises(ValueError, match="heap must be one of auto, steady, default"):
        heap.resolve("jemalloc")


def _timed(kind, prefill_s, decode_ms):
    return {"kind": kind, "prefill": {str(n): {"median_s": t} for n, t in prefill_s.items()},
            "decode": {str(n): {"ms_per_token": t} for n, t in decode_ms.items()}}


def test_targets_judge_each_student_on_what_was_measured():
    floor = _timed("floor", {1024: 1.0, 2048: 2.0, 16384: 16.0}, {1024: 1.0, 32768: 1.0})
    teacher = _timed("teacher", {1024: 1.2, 2048: 3.0, 16384: 60.0}, {1024: 4.0, 32768: 30.0})
    good = _timed("student", {1024: 1.1, 2048: 2.5, 16384: 19.0}, {1024: 3.9, 32768: 4.2})
    # prefill 1.35× the floor at 2048, slower than the teacher at 1024, decode grows 20% and is slower at 1k
    bad = _timed("student", {1024: 1.3, 2048: 2.7, 16384: 19.0}, {1024: 4.1, 32768: 4.92})
    partial = _timed("student", {2048: 2.0}, {1024: 3.0})  # 16384 and the 32k context not measured
    models = {"floor": floor, "teacher": teacher, "good": good, "bad": bad, "partial": partial,
              "attention": _timed("student", {1024: 9.0, 2048: 9.0, 16384: 99.0}, {1024: 9.0, 32768: 99.0})}
    targets = throughput.check_targets(models, throughput.compare(models))
    assert targets["prefill_within_1.3x_floor_at_2048_and_16384"] == {"good": True, "bad": False, "partial": None}
    assert targets["prefill_faster_than_teacher_from_1024"] == {"good": True, "bad": False, "partial": True}
    assert targets["decode_flat_within_10pct_1024_to_32768"] == {"good": True, "bad": False, "partial": None}
    assert targets["decode_no_slower_than_teacher_at_1024"] == {"good": True, "bad": False, "partial": True}
    assert targets["best_student_3.0x_faster_than_teacher_at_16384"] is True  # 60 / 19, the control excluded
    assert targets["teacher_decode_grows_1024_to_32768"] is True


def test_a_verdict_the_rounds_do_not_settle_is_within_noise_and_one_they_do_is_yes_or_no():
    """Per-round ratios (times taken in the same round) decide: all rounds under 1.3× the floor is yes, all over
    is no; a median under the limit with a quarter of the rounds above it is within noise, not yes."""
    def timed(kind, times):  # the same per-round times at both floor-target lengths
        return {"kind": kind, "decode": {}, "prefill": {str(n): {"median_s": sorted(times)[len(times) // 2],
                                                                   "times_s": times} for n in (2048, 16384)}}
    floor = timed("floor", [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0])  # the machine's speed halves every other round
    models = {"floor": floor,
              "paired": timed("student", [1.2, 2.4, 1.2, 2.4, 1.2, 2.4, 1.2]),  # 1.2× in every round
              "slow": timed("student", [1.4, 2.8, 1.4, 2.8, 1.4, 2.8, 1.4]),
              "noisy": timed("student", [1.2, 2.4, 1.2, 3.0, 1.2, 3.0, 1.2])}  # median 1.2×; 1.5× in two rounds
    from bench.perf.ratios import NOISE, all_of, judge, paired_ratio

    ratios = throughput.compare(models)
    verdicts = throughput.check_targets(models, ratios)["prefill_within_1.3x_floor_at_2048_and_16384"]
    assert verdicts == {"paired": True, "slow": False, "noisy": NOISE}
    # the report's ratios are the per-round ones the verdicts read: "noisy" over its medians would be 2.4 / 1.0
    assert ratios["prefill_vs_floor"]["noisy"]["2048"] == pytest.approx(1.2)
    decoding = {"kind": "student", "prefill": {}, "decode": {  # per round 1, 1, 3: growth 1.0, not 3 / 1
        "1024": {"ms_per_token": 1.0, "times_ms": [1.0, 3.0, 1.0]},
        "32768": {"ms_per_token": 3.0, "times_ms": [1.0, 3.0, 3.0]}}}
    assert throughput.compare({"decoding": decoding})["decode_growth"]["decoding"]["ratio"] == 1.0
    # the ratio shown is the median of the per-round ratios (1, 1, 3), not of the medians (3 / 1)
    assert paired_ratio({"median_s": 3.0, "times_s": [1.0, 3.0, 3.0]},
                        {"median_s": 1.0, "times_s": [1.0, 3.0, 1.0]}) == 1.0
    assert judge({"median_s": 1.2}, {"median_s": 1.0}, 1.3, "median_s") is True  # older reports: medians
    assert judge({"median_s": 1.4}, {"median_s": 1.0}, 1.3, "median_s") is False
    assert all_of([True, NOISE, None]) == NOISE
    assert all_of([NOISE, False]) is False and all_of([None]) is None


@pytest.mark.parametrize("args, message", [
    (["--student", "transformerxl"], "unknown student 'transformerxl'; choose one of mamba"),
    (["--student", "gla", "--lengths", "512,0"], "--lengths must be positive integers"),
    (["--student", "gla", "--lengths", "512,1k"], "--lengths must be positive integers"),
    (["--student", "gla", "--decode-contexts", "-5"], "--decode-contexts must be positive integers"),
    (["--student", "gla", "--teacher", "./no/such/teacher"], "does not exist"),
    (["--student", "gla", "--device", "abacus"], "abacus"),
    (["--student", "gla", "--teacher", "./t", "--teacher-shape", "embedded"], "give one of them"),
], ids=["unknown-student", "zero-length", "non-integer", "negative-context", "missing-teacher", "bad-device",
        "two-teachers"])
def test_bad_input_is_one_error_line_and_exit_code_2(args, message, capsys):
    assert throughput.main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_teacher_shapes_are_the_embedded_teacher_and_smollm2_135m():
    """`--teacher-shape embedded` must be the committed embedded teacher's shape, and `smollm2-135m` the published
    model's: its 134,515,008 parameters (tied embeddings), counted on the meta device."""
    from bench.data.teacher import EMBEDDED_TEACHER

    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "hidden_act")
    embedded = json.loads((EMBEDDED_TEACHER / "config.json").read_text())
    config = throughput.teacher_shape_config("embedded")
    assert {f: getattr(config, f) for f in fields} == {f: embedded[f] for f in fields}
    assert config.rope_parameters["rope_theta"] == embedded["rope_parameters"]["rope_theta"]
    smollm = throughput.teacher_shape_config("smollm2-135m")
    with torch.device("meta"):
        model = LlamaForCausalLM(smollm)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert smollm.rope_parameters["rope_theta"] == 100000.0 and smollm.num_key_value_heads == 3
    with pytest.raises(ValueError, match="unknown teacher shape 'gpt5'"):
        throughput.teacher_shape_config("gpt5")


# ------------------------------------------------------------------------------------------ kernel benchmarks
@pytest.mark.slow
def test_recurrence_suite_checks_then_times_every_backend(tmp_path):
    out = tmp_path / "k.json"
    assert bench_kernels.main(["--lengths", "40", "--cases", "linear_recurrence:channel,delta_rule:head",
                               "--backends", "naive,chunk,triton,triton_chunk_parallel", "--repeats", "1",
                               "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["matmul_gflops"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["date"])  # results carry their date
    rows = {(r["op"], r["backend"]): r for r in result["rows"]}
    # the schedule variant is the linear recurrence's alone
    assert set(rows) == ({(op, b) for op in ("linear_recurrence", "delta_rule") for b in ("naive", "chunk", "triton")}
                         | {("linear_recurrence", "triton_chunk_parallel")})
    for row in rows.values():
        assert row["correct"] and row["fwd_s"] > 0 and row["speedup_fwd"] > 0
    # each Triton row says which schedule ran: `auto` is sequential off CUDA, the variant its own
    assert rows["linear_recurrence", "triton"]["schedule"] == "sequential"
    assert rows["linear_recurrence", "triton_chunk_parallel"]["schedule"] == "chunk_parallel"


def test_a_wrong_backend_gets_no_speedup(monkeypatch):
    def off_by_one_percent(*args, **kwargs):
        o, state = linear_recurrence_chunk(*args, **kwargs)
        return o * 1.01, state

    monkeypatch.setitem(BACKENDS, "broken", off_by_one_percent)
    rows = bench_kernels.bench_case("linear_recurrence", "head", 1, 40, 2, 16, ["naive", "broken"], "naive",
                                    "cpu", torch.float32, repeats=1)
    broken = next(r for r in rows if r["backend"] == "broken")
    assert not broken["correct"] and broken["rel_err"] > 5e-3
    assert broken["speedup_fwd"] is None and broken["speedup_fwdbwd"] is None


@pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
def test_prefill_flops_count_the_recurrence_in_its_torch_form(teacher):
    """A compiled pass hides its products from torch's FLOP counter: the count must not depend on it."""
    from torch.utils.flop_counter import FlopCounterMode

    student = students.build_student(teacher, "gated_deltanet", init="random", seed=0).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (1, 100))
    with torch.no_grad(), FlopCounterMode(display=False) as compiled:
        student(ids, use_cache=False)
    with torch.no_grad(), native.disabled():
        assert native.module() is None
        with FlopCounterMode(display=False) as torch_forms:
            student(ids, use_cache=False)
    assert native.module() is not None  # back on after the block
    assert throughput.prefill_flops(student, ids) == torch_forms.get_total_flops() > compiled.get_total_flops()


@pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
@pytest.mark.parametrize("op, decay", [("linear_recurrence", "bonus"), ("delta_rule", "head")])
def test_the_compiled_forward_is_what_the_native_row_checks(monkeypatch, op, decay):
    """With a gradient to record `native` runs `chunk`; its row's check must still read the compiled output."""
    rows = bench_kernels.bench_case(op, decay, 1, 40, 2, 16, ["naive", "native"], "naive", "cpu", torch.float32,
                                    repeats=1)
    assert rows[1]["correct"] and rows[1]["form"].startswith("forward compiled")
    compiled = native.module()

    class OffByOnePercent:
        def __getattr__(self, name):
            def call(*args):
                o, state = getattr(compiled, name)(*args)
                return o * 1.01, state
            return call

    monkeypatch.setattr(native, "without_autograd", lambda *a: None if torch.is_grad_enabled() else OffByOnePercent())
    rows = bench_kernels.bench_case(op, decay, 1, 40, 2, 16, ["naive", "native"], "naive", "cpu", torch.float32,
                                    repeats=1)
    assert not rows[1]["correct"] and rows[1]["speedup_fwd"] is None


@pytest.mark.slow
def test_loss_suites_agree_with_the_materialised_losses():
    distill = distill_loss_bench.run("cpu", quick=True)
    mixer = mixer_loss_bench.run("cpu", quick=True)
    assert {r["backend"] for r in distill} == {"naive", "chunk"} and all(r["correct"] for r in distill)
    assert {r["backend"] for r in mixer} == {"naive", "tiled"} and all(r["correct"] for r in mixer)
    assert all(r["peak_mib"] is not None and r["fwdbwd_s"] > 0 for r in distill + mixer)


@pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
def test_fused_ops_suite_checks_then_times_every_operator(monkeypatch):
    rows = fused_ops_bench.run("cpu", quick=True)
    assert {r["op"] for r in rows} == set(fused_ops_bench._operators(8)) and {r["T"] for r in rows} == {40, 70}
    assert all(r["correct"] and r["speedup"] > 0 and len(r["native_times_s"]) == 2 for r in rows)
    # an operator whose compiled output differs from its torch form's is reported as such, with no ratio
    wrong = {"off by 1e-3": lambda: torch.ones(3) * (1 + 1e-3 * (native.module() is not None))}
    monkeypatch.setattr(fused_ops_bench, "_operators", lambda T: wrong)
    monkeypatch.setattr(fused_ops_bench, "QUICK", {"lengths": (5,), "repeats": 1})
    (row,) = fused_ops_bench.run("cpu", quick=True)
    assert not row["correct"] and row["speedup"] is None and row["max_abs_diff"] > 5e-4


def test_kernel_bench_runs_the_fused_ops_suite_on_cpu_only(tmp_path, capsys):
    assert bench_kernels.main(["--suite", "fused_ops", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --suite fused_ops times compiled CPU passes")
    if native.module() is None:
        return
    out = tmp_path / "fused.json"
    assert bench_kernels.main(["--suite", "fused_ops", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["fused_ops"]
    assert {r["op"] for r in rows} == set(fused_ops_bench._operators(8)) and all(r["correct"] for r in rows)


def _base_checkout(tmp_path, name: str, appended: str):
    """A copy of this tree's kernels whose linear-recurrence chunk form is replaced by `appended` code."""
    import shutil
    from pathlib import Path

    base = tmp_path / name
    shutil.copytree(Path(__file__).resolve().parents[1] / "kernels", base / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    chunk = base / "kernels" / "linear_recurrence" / "chunk.py"
    chunk.write_text(chunk.read_text() + appended)
    return base


@pytest.mark.slow
def test_ab_loads_the_base_checkouts_own_code_and_refuses_to_time_different_outputs(tmp_path, capsys):
    from pathlib import Path

    from bench.perf import kernel_ab

    slow_but_equal = _base_checkout(tmp_path, "naive", """
from kernels.linear_recurrence.naive import linear_recurrence_naive
def linear_recurrence_chunk(q, k, v, chunk_size=None, **kwargs):
    return linear_recurrence_naive(q, k, v, **kwargs)
""")
    assert kernel_ab.main(["--base-dir", str(slow_but_equal), "--cases", "lr:channel:70", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| base" in line]
    assert len(rows) == 1 and float(rows[0].split("|")[-1]) < 1e-4  # the loop's outputs equal the chunk form's
    wrong = _base_checkout(tmp_path, "wrong", """
_right = linear_recurrence_chunk
def linear_recurrence_chunk(*args, **kwargs):
    o, state = _right(*args, **kwargs)
    return o * 1.01, state
""")
    assert kernel_ab.main(["--base-dir", str(wrong), "--cases", "lr:head:70,dr:head:70", "--repeats", "1"]) == 1
    out = capsys.readouterr().out
    assert "outputs differ" in out and out.count("| base") == 1  # only the unchanged delta rule is timed
    import importlib

    ours = importlib.import_module("kernels.linear_recurrence.chunk")  # ours put back, unchanged
    assert ours.__file__.startswith(str(Path(__file__).resolve().parents[1])) and hasattr(ours, "chunk_forms")
    assert kernel_ab.main(["--base-dir", str(tmp_path / "empty"), "--repeats", "1"]) == 2
    assert "no kernels" in capsys.readouterr().err


def test_a_warm_restart_leaves_the_decoder_where_a_restart_does(teacher):
    """The untimed warm-up before each timed decode call must not move the context the call starts from."""
    with torch.no_grad():
        cache = teacher(torch.randint(0, 128, (1, 10)), use_cache=True).past_key_values
        decoder = throughput._Decoder(teacher, cache, torch.tensor([[3]]), steps=3)
        decoder.restart()
        decoder()
        after_restart = (decoder.token.clone(), decoder.cache.get_seq_length())
        decoder.warm_restart(steps=5)
        assert decoder.cache.get_seq_length() == 10 and torch.equal(decoder.token, torch.tensor([[3]]))
        decoder()
    assert torch.equal(decoder.token, after_restart[0]) and decoder.cache.get_seq_length() == after_restart[1] == 13


def test_distill_speed_rates_each_row_against_the_yardstick_timed_in_its_own_rounds(tmp_path, capsys):
    from bench.perf import distill_speed

    out = tmp_path / "speed.json"
    assert distill_speed.main(["--students", "gla,mamba", "--stages", "end_to_end", "--batch", "1", "--seq-len", "16",
                               "--repeats", "2", "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [(r["student"], r["stage"]) for r in doc["rows"]] == [("gla", "end_to_end"), ("mamba", "end_to_end")]
    for row in doc["rows"]:
        for mode in ("eager fp32", "default"):  # the share is of this row's own yardstick
            achieved = row["gflop_per_step"] * row[f"{mode}_tok_s"] / row["tokens_per_step"]
            assert row[f"{mode}_pct_yardstick"] == pytest.approx(100 * achieved / row["yardstick_gflops"][mode])
    for mode in ("eager fp32", "default"):
        low, high = doc["yardstick_gflops_range"][mode]
        assert low == min(r["yardstick_gflops"][mode] for r in doc["rows"])
        assert high == max(r["yardstick_gflops"][mode] for r in doc["rows"])
        assert low <= doc["yardstick_gflops"][mode] <= high
    assert doc["activity"]["source"] in ("/proc/stat", None)  # what else ran meanwhile, where Linux tells
    assert doc["settings"]["students"] == "gla,mamba" and "json" not in doc["settings"]  # no local path kept
    assert "machine: " in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the GPU script
def test_gpu_script_parses_and_names_only_what_exists():
    """bench/perf/gpu_kernels.sh runs only where a GPU is lent, rarely: bash must parse it, and every module,
    test file and kernel-bench backend it names must exist here, so it does not rot between GPU sessions."""
    import importlib.util
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "perf" / "gpu_kernels.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    modules = set(re.findall(r"python3 -m (bench\.perf\.\w+)", text))
    assert {"bench.perf.kernel_bench", "bench.perf.throughput", "bench.perf.mixer_loss_bench"} <= modules
    assert all(importlib.util.find_spec(m) is not None for m in modules), modules
    test_files = set(re.findall(r"tests/\w+\.py", text))
    assert test_files and all((script.parents[2] / f).exists() for f in test_files), test_files
    scripts = set(re.findall(r"python3 ((?:results|bench)/\S+\.py)", text))
    assert scripts and all((script.parents[2] / f).exists() for f in scripts), scripts
    shapes = set(re.findall(r"--teacher-shape (\S+)", text))
    assert shapes and shapes <= set(throughput.TEACHER_SHAPES), shapes
    (backends,) = re.findall(r"^backends=(\S+)$", text, flags=re.M)
    if "triton" in BACKENDS:
        assert set(backends.split(",")) <= bench_kernels.available_backends("linear_recurrence"), backends
    for op, decay in (case.split(":") for case in re.findall(r"^cases=(\S+)$", text, flags=re.M)[0].split(",")):
        assert op in ("linear_recurrence", "delta_rule") and decay in bench_kernels.DECAYS
