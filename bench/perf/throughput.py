"""Throughput and memory: the floor, the teacher and each student side by side, measured in one run.

    python -m bench.throughput --student NAME|all [--teacher DIR|HUB_ID | --teacher-shape NAME] [--lengths 1024,...,16384]
        [--train-lengths 2048] [--decode-contexts 1024,4096,16384,32768] [--decode-steps 32] [--repeats 3]
        [--prefill-logits all|last]
        [--dtype float32] [--device cpu|cuda] [--threads N] [--init random|qkv_copy] [--heap auto|steady|default]
        [--json FILE]

In the run pipeline: `short_sweep(teacher, student)` (student, teacher and floor at short lengths);
both use `measure(model, kind, lengths, decode_contexts, repeats, dtype)`; `validate(doc)` checks either.

For every model, batch 1:
- prefill: one forward over T tokens (every position's logits, or with `--prefill-logits last` only the last
  position's, as a generation's prompt needs; no cache), time and tokens/s per length;
- training step: forward + backward of the next-token loss, tokens/s per length (no optimizer step);
- decode: the model's own cache is filled to exactly N tokens by chunked prefill (transformers'
  DynamicCache for the teacher, the recurrent StudentCache for students), then single-token greedy
  steps are timed, every call from the same N (the cache is put back between calls, after a few untimed steps
  that bring the model's weights back into the CPU's caches): ms per token, and
  the cache's bytes per sequence at that context;
- peak memory of one untimed call per model and block: CUDA's max_memory_allocated, or on CPU the process's
  resident high-water mark (VmHWM) reset before the call through /proc/self/clear_refs (reported as absolute
  and as the delta over the resident size before the call; the source is recorded).

The floor is the same model with a mixer that costs nothing beyond its projections (`FloorMixer`: q/k/v/o
projections, o = v, no token mixing), so "student / floor" is the price of a student's token mixing.
Every timing is a median over repeats after a warm-up (the untimed memory call), with its spread, the models
measured together taking turns call by call (bench.perf.timing.time_round_robin: a slow spell lands on all of them
alike; in prefill the floor also runs next to every other model, in decode the teacher at the first context, and
ratios to them divide by those neighbouring runs), and in decode every (model, context) pair takes its turn, a
model's contexts back to back, so growth with context is measured side by side too; every result carries the machine
header (device, threads, torch, commit), dtype and the backend actually used, and the report what else ran on the
CPUs meanwhile (`bench.perf.activity`).
"""
from __future__ import annotations

import argparse
import copy
import functools
import gc
import math
import resource
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from bench.perf.activity import MachineActivity, describe, validate_activity
from bench.perf.heap import HEAPS, release_free
from bench.perf.heap import applied as heap_settings
from bench.perf.heap import use as use_heap
from bench.perf.ratios import all_of, judge, paired_ratio
from bench.perf.timing import time_round_robin
from bench.provenance import header, machine
from kernels import native
from kernels._backend import pick_backend
from kernels.delta_rule import auto_backend as delta_rule_auto_backend
from kernels.linear_recurrence import BACKENDS as LINEAR_RECURRENCE_BACKENDS
from students.base import Mixer, RecurrentMixer
from students.layers import kept_weight_stacks
from students.modeling import _CACHE_FIELD, StudentCache
from students.registry import available
from students.surgery import build_student, load_teacher

REPORT_SCHEMA = "throughput-report/1"
SWEEP_SCHEMA = "throughput-sweep/1"
KINDS = ("floor", "teacher", "student")
CONTROL = "attention"  # softmax attention: a control, never the "best student"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384)
DEFAULT_TRAIN_LENGTHS = (2048,)
DEFAULT_DECODE_CONTEXTS = (1024, 4096, 16384, 32768)
DECODE_STEPS = 32  # tokens per timed decode call; every call starts at the same context N (`rewinder`)
WARM_STEPS = 4  # untimed decode steps before each timed call (see measure_side_by_side)
PREFILL_CHUNK = 2048  # chunk size used to fill a cache to the decode context
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Targets from the issues, checked on the benchmark output (never in tests).
FLOOR_TARGET = (1.3, (2048, 16384))  # every student's prefill ≤ 1.3× the floor at these lengths
FASTER_THAN_TEACHER_FROM = 1024  # every student's prefill faster than the teacher's at every length from here
TEACHER_TARGET = (3.0, 16384)  # best student ≥ 3× faster than the teacher at 16384
DECODE_FLAT_TARGET = (1.10, 1024, 32768)  # student decode latency within 10% from 1k to 32k context
DECODE_VS_TEACHER_AT = 1024  # every student's decode per token no slower than the teacher's at this context

class FloorMixer(Mixer):
    """The cost floor: a student's q/k/v/o projections and nothing else (o = v, no token mixing, no state).

    q, k and v come from one fused projection of H·K channels each, the width of the students' expanded
    heads, so forward and backward pay for all three matmuls although only v is read.
    """

    name = "floor"

    def __init__(self, config):
        super().__init__(config)
        width = config.num_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)

    def forward(self, x, state=None, backend="auto"):
        values = self.qkv_proj(x)[..., 2 * self.o_proj.in_features:]
        return self.o_proj(values), {}

    def state_size(self, seq_len: int = 1, dtype: torch.dtype = torch.float32) -> int:
        return 0


def build_floor(teacher) -> nn.Module:
    """The teacher-shaped student with every mixer swapped for `FloorMixer` (for timing only: never saved,
    and not a registry entry, so `students.available()` is unchanged)."""
    model = build_student(teacher, CONTROL, init="random", seed=0)
    dtype = next(model.parameters()).dtype
    for layer in model.model.layers:
        layer.mixer = FloorMixer(layer.mixer.config).to(dtype)
    return model.eval()


# Untrained teachers of named shapes, for timing (weights do not matter for speed, and no hub is needed): the
# embedded teacher's, and SmolLM2-135M's (the README's GPU teacher; its hub config.json), a published model's width
# and depth.
TEACHER_SHAPES = {
    "embedded": None,  # bench.data.teacher.TeacherRecipe
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5),
}


def teacher_shape_config(shape: str = "embedded"):
    """The LlamaConfig of one of `TEACHER_SHAPES`: tied embeddings, sdpa attention."""
    from transformers import LlamaConfig

    from bench.data.teacher import TeacherRecipe

    if shape not in TEACHER_SHAPES:
        raise ValueError(f"unknown teacher shape {shape!r}; choose one of {', '.join(TEACHER_SHAPES)}")
    fields = TEACHER_SHAPES[shape]
    if fields is None:
        recipe = TeacherRecipe()
        fields = dict(vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size,
                      intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                      num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
                      head_dim=recipe.head_dim, max_position_embeddings=recipe.context)
    return LlamaConfig(**fields, tie_word_embeddings=True, attn_implementation="sdpa")


def shaped_teacher(shape: str = "embedded"):
    """An untrained Llama of one of `TEACHER_SHAPES`, seed 0."""
    from transformers import LlamaForCausalLM

    config = teacher_shape_config(shape)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def embedded_shape_teacher():
    """An untrained Llama of exactly the embedded teacher's shape (weights do not matter for speed)."""
    return shaped_teacher("embedded")


# ---------------------------------------------------------------- memory, caches, backends

def _proc_status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_resident_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_source(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda max_memory_allocated, reset per block"
    if _proc_status_bytes("VmHWM") is not None and _reset_resident_peak():
        kept = " (the steady heap's free pages released first)" if heap_settings() else ""
        return f"process VmHWM, reset per block via /proc/self/clear_refs{kept}"
    return "process ru_maxrss, lifetime high-water mark (not reset: only the delta is meaningful, if any)"


class PeakMemory:
    """Peak memory of a `with` block: absolute and above the level at the block's start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = self.peak = 0

    def _current(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _proc_status_bytes("VmRSS") or 0

    def _high_water(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            release_free()  # under a steady heap, kept free blocks would otherwise absorb the block's allocations
            _reset_resident_peak()
        self.baseline = self._current()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.peak = self._high_water()

    def report(self) -> dict:
        return {"peak_memory_bytes": self.peak, "peak_memory_delta_bytes": max(0, self.peak - self.baseline)}


def cache_nbytes(cache) -> int:
    """Bytes held by a generation cache: StudentCache's states, or DynamicCache's keys and values."""
    if cache is None:
        return 0
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def resolved_backend(model, kind: str, device: torch.device) -> dict:
    """What actually runs: the kernel `backend="auto"` resolves to, or the teacher's attention implementation."""
    if kind == "teacher":
        implementation = getattr(model.config, "_attn_implementation", None) or "eager"
        return {"requested": "attn_implementation", "prefill": implementation,
                "decode": f"{implementation} with transformers DynamicCache (grows with context)"}
    if kind == "floor":
        return {"requested": "none", "prefill": "none (no token mixing)", "decode": "none (no state)"}
    mixer = model.mixers[0]
    if isinstance(mixer, RecurrentMixer):
        if mixer.uses_delta_rule:  # its `auto` also depends on the inputs' dtype
            op, name = "delta_rule", delta_rule_auto_backend(device, next(model.parameters()).dtype)
        else:
            op, chosen = "linear_recurrence", pick_backend("auto", LINEAR_RECURRENCE_BACKENDS, device, "linear_recurrence")
            name = next(n for n, fn in LINEAR_RECURRENCE_BACKENDS.items() if fn is chosen)
        compiled = device.type == "cpu" and native.module() is not None  # one compiled call per token (kernels/native)
        if name == "native" and not compiled:  # the extension could not be built: the chunked torch form runs
            name = "chunk"
        return {"requested": "auto", "prefill": f"{op}:{name}",
                "decode": "recurrent step (kernel backend `step`, O(1) per token, constant state"
                          + (", one compiled call per token: kernels/native)" if compiled else ", Python ops)")}
    return {"requested": "auto", "prefill": "torch scaled_dot_product_attention",
            "decode": "KV cache in StudentCache (grows with context)"}


@contextmanager
def _trainable(model):
    """Gradients on for every parameter for the duration (a frozen teacher included); restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        for parameter, flag in zip(model.parameters(), flags):
            parameter.requires_grad_(flag)


# ---------------------------------------------------------------- measurement

def _check_lengths(name: str, values) -> list[int]:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return values


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, dropout_p=0.0, is_causal=False, *args, out_shape=None,
                    **kwargs) -> int:
    """CPU flash attention's FLOPs (FlopCounterMode counts the CUDA kernels only): the score and value
    products, halved when causal (the kernel skips the blocks above the diagonal)."""
    from torch.utils.flop_counter import sdpa_flop_count

    flops = sdpa_flop_count(query_shape, key_shape, value_shape)
    return flops // 2 if is_causal else flops


# What a prefill's forward forms of the LM head: every position's logits (training's and scoring's forward) or the
# last position's (a generation's prompt; transformers' `logits_to_keep=1`, which the students take too). Forwards
# of every position get no `logits_to_keep` at all, so a model whose forward lacks it is timed as before.
PREFILL_LOGITS = {"all": {}, "last": {"logits_to_keep": 1}}


def prefill_flops(model, ids: torch.Tensor, prefill_logits: str = "all") -> int:
    """Matrix-product FLOPs of one prefill (torch's FlopCounterMode: mm, bmm, addmm, baddbmm, attention; the
    elementwise work, norms, short convolutions and triangular solves are not counted), from a real call, since
    the chunk kernels choose their forms from the data. The recurrences are counted in their torch chunk forms:
    a compiled pass (`kernels.native`) is opaque to the counter, and the chunk form's products are the work a
    parallel form of the same operator does."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with torch.no_grad(), native.disabled(), \
            FlopCounterMode(display=False, custom_mapping={cpu_flash: _cpu_sdpa_flops}) as counter:
        model(ids, use_cache=False, **PREFILL_LOGITS[prefill_logits])
    return sum(count for op, count in counter.get_flop_counts()["Global"].items() if "convolution" not in str(op))


def measure(model, kind: str, lengths, decode_contexts, repeats: int, dtype: torch.dtype = torch.float32,
            train_lengths=None, decode_steps: int = DECODE_STEPS, prefill_chunk: int = PREFILL_CHUNK,
            prefill_logits: str = "all") -> dict:
    """`measure_side_by_side` of one model of `kind`."""
    return measure_side_by_side({kind: (model, kind)}, lengths, decode_contexts, repeats, dtype, train_lengths,
                                decode_steps, prefill_chunk, prefill_logits)[kind]


def measure_side_by_side(models: dict[str, tuple[nn.Module, str]], lengths, decode_contexts, repeats: int,
                         dtype: torch.dtype = torch.float32, train_lengths=None, decode_steps: int = DECODE_STEPS,
                         prefill_chunk: int = PREFILL_CHUNK, prefill_logits: str = "all") -> dict[str, dict]:
    """Prefill, training-step and decode timings and memory of several models (batch 1), JSON-able, by name.

    `models` maps a name to (model, kind): "teacher" (a transformers causal LM, DynamicCache), "student" or
    "floor" (StudentForCausalLM, StudentCache). The timed calls of the models take turns (`time_round_robin`),
    so the ratios between models hold on a machine whose speed drifts; peak memory is read from one untimed
    call per model and block. The models are cast to `dtype` in place; their weights are left unchanged and
    their `.grad` cleared. Keys of the per-length maps are strings (as JSON writes them). `train_lengths`
    defaults to `lengths`; `prefill_logits` (`PREFILL_LOGITS`) is what a prefill forms of the LM head.
    """
    for name, (_, kind) in models.items():
        if kind not in KINDS:
            raise ValueError(f"{name}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    lengths = _check_lengths("lengths", lengths)
    train_lengths = _check_lengths("train_lengths", lengths if train_lengths is None else train_lengths)
    decode_contexts = sorted(_check_lengths("decode_contexts", decode_contexts))
    if repeats < 1 or decode_steps < 1 or prefill_chunk < 1:
        raise ValueError("repeats, decode_steps and prefill_chunk must be ≥ 1")
    if prefill_logits not in PREFILL_LOGITS:
        raise ValueError(f"prefill_logits must be one of {', '.join(PREFILL_LOGITS)}, got {prefill_logits!r}")
    was_training = {name: model.training for name, (model, _) in models.items()}
    gc.collect()  # once, not per block: a full collection costs a fifth of a second here
    for model, _ in models.values():
        model.to(dtype).eval()
    devices = {next(model.parameters()).device for model, _ in models.values()}
    if len(devices) != 1:
        raise ValueError(f"models to compare must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    vocab_size = min(model.config.vocab_size for model, _ in models.values())
    generator = torch.Generator().manual_seed(0)

    def random_tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab_size, (1, n), generator=generator).to(device)

    def memory_of(fn, before=None) -> dict:  # one untimed call in a block of its own
        if before is not None:
            before()
        with PeakMemory(device) as peak:
            fn()
        return peak.report()

    # In prefill the floor runs next to every other model (the anchor), so each ratio to it divides calls
    # seconds apart: the targets' "× floor" then carries a few per cent of spread, not a round's drift.
    floor = next((name for name, (_, kind) in models.items() if kind == "floor"), None)
    results = {name: {
        "kind": kind, "machine": machine(), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "backend": resolved_backend(model, kind, device), "memory_source": memory_source(device),
        "parameters": sum(p.numel() for p in model.parameters()), "batch_size": 1, "repeats": repeats,
        "warmup": 1, "timing": ("round robin over the models measured together (decode: over every model and context)"
                                  + ("; prefill: the floor also between every two others" if floor else "")
                                  + ("; decode: the teacher at the first context also between every two others"
                                     if any(kind == "teacher" for _, kind in models.values()) else "")),
        "prefill": {}, "train": {},
        "decode": {},
    } for name, (model, kind) in models.items()}

    def record(section: str, key: int, calls: dict, memory: dict, timings: dict, tokens: int) -> None:
        for name in calls:
            results[name][section][str(key)] = {**timings[name], "tokens_per_s": tokens / timings[name]["median_s"],
                                                **memory[name]}

    prefill_ids = {}
    for length in lengths:
        ids = random_tokens(length)
        calls = {name: functools.partial(model, ids, use_cache=False, **PREFILL_LOGITS[prefill_logits])
                 for name, (model, _) in models.items()}
        with torch.no_grad():
            # The untimed memory call is each model's warm-up for this block: no second warm-up round.
            memory = {name: memory_of(call) for name, call in calls.items()}
            record("prefill", length, calls, memory, time_round_robin(calls, repeats, warmup=0, anchor=floor), length)
        prefill_ids[length] = ids

    with ExitStack() as trainable:
        for model, _ in models.values():
            trainable.enter_context(_trainable(model))
        for length in train_lengths:
            ids = random_tokens(length)
            calls = {name: functools.partial(_train_step, model, ids) for name, (model, _) in models.items()}
            memory = {name: memory_of(call) for name, call in calls.items()}  # the warm-up, as in prefill
            record("train", length, calls, memory, time_round_robin(calls, repeats, warmup=0), length)

    with torch.no_grad():
        # Every (model, context) pair gets its own filled cache, and all pairs take turns in one round robin,
        # a model's contexts back to back: a slow spell then lands on every context alike, so a model's
        # decode growth across contexts is measured side by side, as the ratios between models are.
        first_token, decoders, memory, state_bytes = random_tokens(1), {}, {}, {}
        for name, (model, _) in models.items():
            cache, seen = None, 0
            for context in decode_contexts:  # fill by chunked prefill, not N single steps; copy at each context
                while seen < context:
                    n = min(prefill_chunk, context - seen)
                    cache = getattr(model(random_tokens(n), use_cache=True, **{_CACHE_FIELD: cache}), _CACHE_FIELD)
                    seen += n
                decoder = _Decoder(model, copy.deepcopy(cache), first_token, decode_steps)
                decoders[name, context] = decoder
                state_bytes[name, context] = cache_nbytes(decoder.cache)
                memory[name, context] = memory_of(decoder, decoder.restart)
            del cache
        # Before each timed call, untimed: the cache put back and a few steps decoded, so every call starts warm
        # (the model's weights in the last-level cache, as in continuous decoding) whichever model ran before it.
        # (The memory call above was each decoder's first call, so no warm-up round either.)
        # The teacher at the first context runs between every two others (the anchor), so "no slower than the
        # teacher at 1k" divides calls seconds apart, as prefill's "× floor" does.
        teacher = next((name for name, (_, kind) in models.items() if kind == "teacher"), None)
        timings = time_round_robin(decoders, repeats, warmup=0,
                                   before={key: d.warm_restart for key, d in decoders.items()},
                                   anchor=(teacher, decode_contexts[0]) if teacher else None)
        for (name, context), timing in timings.items():
            model, kind = models[name]
            entry = {"context_tokens": context, "decode_steps": decode_steps,
                     "ms_per_token": 1e3 * timing["median_s"] / decode_steps,
                     "min_ms": 1e3 * timing["min_s"] / decode_steps,
                     "max_ms": 1e3 * timing["max_s"] / decode_steps,
                     "times_ms": [1e3 * t / decode_steps for t in timing["times_s"]],
                     **({"anchor_times_ms": [1e3 * t / decode_steps for t in timing["anchor_times_s"]]}
                        if "anchor_times_s" in timing else {}),
                     **({"anchor": True} if timing.get("anchor") else {}),
                     "repeats": repeats, "state_bytes": state_bytes[name, context], **memory[name, context]}
            if kind != "teacher":  # the mixers' own account, as the leaderboard's state-size column uses
                entry["mixer_state_size_bytes"] = sum(m.state_size(context, dtype) for m in model.mixers)
            results[name]["decode"][str(context)] = entry
        del decoders
    # Counted after every timing (one more untimed prefill per model and length): no timed call follows it.
    for length, ids in prefill_ids.items():
        for name, (model, _) in models.items():
            results[name]["prefill"][str(length)]["matmul_flops"] = prefill_flops(model, ids, prefill_logits)
    for name, (model, _) in models.items():
        model.train(was_training[name])
    return results


def _train_step(model, ids: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()


class _Decoder:
    """Greedy decoding of `steps` tokens from a filled cache; `restart` puts the cache back to where it was, so
    every timed call decodes the same tokens from the same context N and none sees a longer one."""

    def __init__(self, model, cache, first_token: torch.Tensor, steps: int):
        self.model, self.steps, self.first_token = model, steps, first_token
        self.cache, self.token, self.rewind = cache, first_token, rewinder(cache)

    def restart(self) -> None:
        self.cache, self.token = self.rewind(), self.first_token

    def warm_restart(self, steps: int = WARM_STEPS) -> None:
        """`restart`, after decoding `steps` tokens untimed (weights and cache back in the CPU's caches)."""
        self.restart()
        self.run(steps)
        self.restart()

    def __call__(self) -> None:
        self.run(self.steps)

    def run(self, steps: int) -> None:
        with kept_weight_stacks():  # as `StudentForCausalLM.generate` decodes
            for _ in range(steps):
                output = self.model(self.token, use_cache=True, **{_CACHE_FIELD: self.cache})
                self.cache, self.token = getattr(output, _CACHE_FIELD), output.logits[:, -1:].argmax(-1)


def rewinder(cache):
    """A function that puts `cache` back to what it holds now. A student's step replaces its layers' state
    dicts and never mutates them, so keeping the list of states suffices; a transformers cache is cropped
    back to its current length (`crop(-n)` removes n tokens)."""
    if isinstance(cache, StudentCache):
        states, seen = list(cache.states), cache.seen_tokens

        def rewind():
            cache.states, cache.seen_tokens = list(states), seen
            return cache
    else:
        length = cache.get_seq_length()

        def rewind():
            extra = cache.get_seq_length() - length
            if extra:
                cache.crop(-extra)
            return cache
    return rewind


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _prefill_s(result: dict, length: str) -> float | None:
    return result["prefill"].get(length, {}).get("median_s")


def _decode_growth(result: dict) -> dict | None:
    """Decode latency at the longest context over the one at 1k (or the shortest measured), round by round."""
    contexts = sorted(result["decode"], key=int)
    if len(contexts) < 2:
        return None
    end = contexts[-1]
    start = "1024" if "1024" in contexts[:-1] else contexts[0]
    return {"from_context": int(start), "to_context": int(end),
            "ratio": paired_ratio(result["decode"][end], result["decode"][start], "ms_per_token")}


def compare(models: dict[str, dict]) -> dict:
    """Ratios between models measured in the same run: student/floor prefill, teacher/best student, decode growth;
    each the median of its per-round ratios (`paired_ratio`), the same the verdicts and the report table read."""
    floor, teacher = models.get("floor"), models.get("teacher")
    students = {name: r for name, r in models.items() if r["kind"] == "student"}
    ratios: dict = {"prefill_vs_floor": {}, "prefill_flops_vs_floor": {}, "decode_growth": {}}
    if floor:
        for name, r in {**students, **({"teacher": teacher} if teacher else {})}.items():
            ratios["prefill_vs_floor"][name] = {length: paired_ratio(entry, floor["prefill"].get(length))
                                                for length, entry in r["prefill"].items()}
            ratios["prefill_flops_vs_floor"][name] = {
                length: _ratio(entry.get("matmul_flops"), floor["prefill"].get(length, {}).get("matmul_flops"))
                for length, entry in r["prefill"].items()}
    for name, r in models.items():
        ratios["decode_growth"][name] = _decode_growth(r)
    candidates = {n: r for n, r in students.items() if n != CONTROL} or students
    if teacher and candidates:
        longest = max(teacher["prefill"], key=int)
        timed = {n: _prefill_s(r, longest) for n, r in candidates.items() if _prefill_s(r, longest)}
        if timed:
            best = min(timed, key=timed.get)
            ratios["teacher_prefill_vs_best_student"] = {
                "length": int(longest), "best_student": best,
                "ratio": paired_ratio(teacher["prefill"][longest], candidates[best]["prefill"][longest])}
    return ratios


def check_targets(models: dict[str, dict], ratios: dict) -> dict:
    """The issues' targets, judged on what this run measured (`bench.perf.ratios.judge`: True, False or
    "within noise"; None where a needed length was not measured).

    Per student: prefill ≤ 1.3× the floor at 2,048 and 16,384; prefill faster than the teacher at every measured
    length ≥ 1,024; decode per token within 10% from 1k to 32k context and no slower than the teacher's at 1k.
    """
    teacher, floor = models.get("teacher"), models.get("floor")
    students = {n: r for n, r in models.items() if r["kind"] == "student" and n != CONTROL}
    limit, floor_lengths = FLOOR_TARGET
    growth_limit, start, end = DECODE_FLAT_TARGET

    within_floor, faster, flat, decode_vs_teacher = {}, {}, {}, {}
    for name, r in students.items():
        at_floor_lengths = [judge(r["prefill"].get(str(n)), floor and floor["prefill"].get(str(n)), limit, "median_s")
                            for n in floor_lengths]
        within_floor[name] = None if None in at_floor_lengths else all_of(at_floor_lengths)
        if teacher:
            faster[name] = all_of(judge(r["prefill"][n], teacher["prefill"].get(n), 1.0, "median_s")
                                  for n in r["prefill"] if int(n) >= FASTER_THAN_TEACHER_FROM)
            at = str(DECODE_VS_TEACHER_AT)
            decode_vs_teacher[name] = judge(r["decode"].get(at), teacher["decode"].get(at), 1.0, "ms_per_token")
        growth = ratios["decode_growth"].get(name)
        spans = growth and growth["from_context"] == start and growth["to_context"] == end
        flat[name] = (judge(r["decode"][str(end)], r["decode"][str(start)], growth_limit, "ms_per_token")
                      if spans else None)
    speedup, at_length = TEACHER_TARGET
    best = ratios.get("teacher_prefill_vs_best_student")
    growth = ratios["decode_growth"].get("teacher")
    teacher_spans = growth and growth["from_context"] == start and growth["to_context"] == end
    return {f"prefill_within_{limit}x_floor_at_{'_and_'.join(map(str, floor_lengths))}": within_floor,
            f"prefill_faster_than_teacher_from_{FASTER_THAN_TEACHER_FROM}": faster,
            f"best_student_{speedup}x_faster_than_teacher_at_{at_length}":
                best["ratio"] >= speedup if best and best["length"] == at_length else None,
            f"decode_flat_within_{round(100 * (growth_limit - 1))}pct_{start}_to_{end}": flat,
            f"decode_no_slower_than_teacher_at_{DECODE_VS_TEACHER_AT}": decode_vs_teacher,
            f"teacher_decode_grows_{start}_to_{end}": growth["ratio"] > growth_limit if teacher_spans else None}


def _per_role(models: dict[str, dict], section: str, field: str) -> dict:
    """{role: {length: entry[field]}} from the measurements of each role."""
    return {role: {length: entry[field] for length, entry in result[section].items()}
            for role, result in models.items()}


def short_sweep(teacher, student, lengths=(256, 512, 1024), decode_contexts=(256, 1024), repeats=3,
                heap: str = "auto") -> dict:
    """The run pipeline's throughput record: student, teacher and floor measured in one go, JSON-able.

    Per-role maps `{"student": {length: value}, "teacher": ..., "floor": ...}` for prefill and training
    tokens/s and decode ms/token; `state_bytes_per_sequence` is the student's cache and
    `kv_cache_bytes_per_sequence` the teacher's, both `{context: bytes}`. Full measurements under `details`.
    `heap` as `bench.throughput --heap`: `auto` keeps glibc's heap steady from here on, for the rest of the process
    (a distillation step's speed does not change with it: `results/speed/speed_probes_2026-12-07.md`); the record's
    `heap` says which heap the calls ran on.
    """
    heap_used, mallopt = use_heap(heap)
    dtype = next(student.parameters()).dtype
    floor = build_floor(teacher).to(next(student.parameters()).device)
    models = measure_side_by_side({role: (model, role) for role, model in
                                   (("student", student), ("teacher", teacher), ("floor", floor))},
                                  lengths, decode_contexts, repeats, dtype)
    del floor
    ratios = compare({"floor": models["floor"], "teacher": models["teacher"],
                      student.config.student: models["student"]})
    sweep = {
        "schema": SWEEP_SCHEMA, "machine": machine(), "student": student.config.student,
        "dtype": str(dtype).removeprefix("torch."), "heap": heap_used, "mallopt": mallopt,
        "backend": {role: r["backend"] for role, r in models.items()},
        "prefill_tokens_per_s": _per_role(models, "prefill", "tokens_per_s"),
        "train_tokens_per_s": _per_role(models, "train", "tokens_per_s"),
        "decode_ms_per_token": _per_role(models, "decode", "ms_per_token"),
        "state_bytes_per_sequence": _per_role(models, "decode", "state_bytes")["student"],
        "kv_cache_bytes_per_sequence": _per_role(models, "decode", "state_bytes")["teacher"],
        "prefill_vs_floor": ratios["prefill_vs_floor"].get(student.config.student, {}),
        "details": models,
    }
    validate(sweep)
    return sweep


# ---------------------------------------------------------------- schema

def _fail(path: str, message: str):
    raise ValueError(f"invalid throughput document at {path}: {message}")


def _need(document: dict, key: str, kind, path: str):
    if not isinstance(document, dict) or key not in document:
        _fail(path, f"missing key {key!r}")
    value = document[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        _fail(f"{path}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _positive(value, path: str, allow_zero: bool = False):
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number_ok or value < 0 or (value == 0 and not allow_zero):
        _fail(path, f"expected a finite {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def _length_key(key, path: str):
    if not (isinstance(key, str) and key.isdigit() and int(key) > 0):
        _fail(path, f"length key {key!r} is not a positive integer string")


def _length_map(mapping, path: str, allow_zero: bool = False):
    """{length: number}, non-empty, every number finite and positive (or zero where allowed)."""
    if not isinstance(mapping, dict) or not mapping:
        _fail(path, "expected a non-empty {length: value} map")
    for key, value in mapping.items():
        _length_key(key, path)
        _positive(value, f"{path}[{key}]", allow_zero)


def _length_entries(result: dict, section: str, path: str) -> dict:
    """{length: {field: value}}, non-empty, keyed by positive integer strings."""
    entries = _need(result, section, dict, path)
    if not entries:
        _fail(f"{path}.{section}", "nothing measured")
    for key, entry in entries.items():
        _length_key(key, f"{path}.{section}")
        if not isinstance(entry, dict):
            _fail(f"{path}.{section}[{key}]", f"expected an object, got {type(entry).__name__}")
    return entries


def _validate_machine(document: dict, path: str):
    header_fields = _need(document, "machine", dict, path)
    for key in ("device", "torch", "commit", "torch_threads"):
        _need(header_fields, key, (str, int), f"{path}.machine")


# Fields every measurement entry carries: (section, positive fields, non-negative fields).
MEASUREMENT_FIELDS = (
    ("prefill", ("median_s", "min_s", "max_s", "tokens_per_s"), ("peak_memory_bytes", "peak_memory_delta_bytes")),
    ("train", ("median_s", "min_s", "max_s", "tokens_per_s"), ("peak_memory_bytes", "peak_memory_delta_bytes")),
    ("decode", ("ms_per_token", "min_ms", "max_ms"), ("state_bytes", "peak_memory_bytes", "peak_memory_delta_bytes")),
)


def _validate_measurement(result: dict, path: str):
    _validate_machine(result, path)
    for key in ("device", "dtype", "kind", "memory_source"):
        _need(result, key, str, path)
    _need(result, "backend", dict, path)
    for section, positive, non_negative in MEASUREMENT_FIELDS:
        for length, entry in _length_entries(result, section, path).items():
            for key in positive:
                _positive(entry.get(key), f"{path}.{section}[{length}].{key}")
            for key in non_negative:
                _positive(entry.get(key), f"{path}.{section}[{length}].{key}", allow_zero=True)
            if section == "prefill" and "matmul_flops" in entry:  # reports from before the count lack it
                _positive(entry["matmul_flops"], f"{path}.prefill[{length}].matmul_flops", allow_zero=True)


def validate(document: dict) -> None:
    """Raise ValueError naming the first bad path, for a CLI report or a `short_sweep` record."""
    if not isinstance(document, dict):
        _fail("$", "expected an object")
    schema = _need(document, "schema", str, "$")
    _validate_machine(document, "$")
    if schema == SWEEP_SCHEMA:
        for key in ("prefill_tokens_per_s", "train_tokens_per_s", "decode_ms_per_token"):
            roles = _need(document, key, dict, "$")
            for role in ("student", "teacher"):
                _length_map(_need(roles, role, dict, f"$.{key}"), f"$.{key}.{role}")
        _length_map(_need(document, "state_bytes_per_sequence", dict, "$"), "$.state_bytes_per_sequence",
                    allow_zero=True)
        _length_map(_need(document, "kv_cache_bytes_per_sequence", dict, "$"), "$.kv_cache_bytes_per_sequence")
        for role, result in _need(document, "details", dict, "$").items():
            _validate_measurement(result, f"$.details.{role}")
        if "heap" in document and document["heap"] not in ("steady", "default"):  # sweeps before it lack it
            _fail("$.heap", f"expected 'steady' or 'default', got {document['heap']!r}")
    elif schema == REPORT_SCHEMA:
        _need(document, "settings", dict, "$")
        _need(document, "teacher", dict, "$")
        models = _need(document, "models", dict, "$")
        for required in ("floor", "teacher"):
            _need(models, required, dict, "$.models")
        for name, result in models.items():
            _validate_measurement(result, f"$.models.{name}")
        _need(document, "ratios", dict, "$")
        _need(document, "targets", dict, "$")
        if "activity" in document:  # reports from before it was measured lack it
            try:
                validate_activity(document["activity"])
            except ValueError as err:
                _fail("$.activity", str(err))
    else:
        _fail("$.schema", f"unknown schema {schema!r}; expected {REPORT_SCHEMA!r} or {SWEEP_SCHEMA!r}")


# ---------------------------------------------------------------- CLI

def _parse_lengths(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{option} must be positive integers like 512,1024, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise ValueError(f"{option} must be positive integers like 512,1024, got {text!r}")
    return values


def _print_result(name: str, r: dict) -> None:
    prefill = "  ".join(f"{k}:{v['median_s'] * 1e3:.1f}ms/{v['tokens_per_s']:.0f}tok/s"
                        for k, v in r["prefill"].items())
    train = "  ".join(f"{k}:{v['tokens_per_s']:.0f}tok/s" for k, v in r["train"].items())
    decode = "  ".join(f"{k}:{v['ms_per_token']:.2f}ms/{v['state_bytes'] / 2 ** 20:.2f}MiB"
                       for k, v in r["decode"].items())
    print(f"{name:16} [{r['backend']['prefill']}]\n  prefill  {prefill}\n  train    {train}\n"
          f"  decode   {decode}  (ms/token / cache per sequence)", flush=True)


def _print_ratios(ratios: dict, targets: dict) -> None:
    print("prefill time / floor (matmul FLOPs / floor's):")
    for name, by_length in ratios["prefill_vs_floor"].items():
        flops = ratios.get("prefill_flops_vs_floor", {}).get(name, {})
        print(f"  {name:16} " + "  ".join(f"{k}:{v:.2f}x" + (f" ({flops[k]:.2f}x)" if flops.get(k) else "")
                                          for k, v in by_length.items() if v is not None))
    best = ratios.get("teacher_prefill_vs_best_student")
    if best:
        print(f"teacher prefill / best student ({best['best_student']}) at {best['length']}: {best['ratio']:.2f}x")
    print("decode latency growth (longest context / 1k):")
    for name, growth in ratios["decode_growth"].items():
        if growth:
            print(f"  {name:16} {growth['ratio']:.2f}x ({growth['from_context']} -> {growth['to_context']})")
    print("targets:", targets, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help=f"a registry name ({', '.join(available())}), "
                                                         "a comma-separated list, or 'all'")
    parser.add_argument("--teacher", help="local HF directory or hub id; default: the embedded teacher if present, "
                                          "else an untrained model of its shape")
    parser.add_argument("--teacher-shape", choices=sorted(TEACHER_SHAPES),
                        help="time an untrained teacher of this shape instead (weights do not matter for speed)")
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)), help="prefill lengths")
    parser.add_argument("--train-lengths", default=",".join(map(str, DEFAULT_TRAIN_LENGTHS)),
                        help="training-step lengths")
    parser.add_argument("--decode-contexts", default=",".join(map(str, DEFAULT_DECODE_CONTEXTS)))
    parser.add_argument("--decode-steps", type=int, default=DECODE_STEPS, help="tokens per timed decode call")
    parser.add_argument("--prefill-logits", choices=sorted(PREFILL_LOGITS), default="all",
                        help="what a prefill forms of the LM head: every position's logits (as training and scoring "
                             "do) or the last position's (a generation's prompt)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--init", choices=("random", "qkv_copy"), default="random",
                        help="weights do not matter for speed")
    parser.add_argument("--heap", choices=HEAPS, default="auto",
                        help="steady: glibc's freed blocks kept for reuse, so no forward pays page faults that depend "
                             "on what ran before it (bench.perf.heap); default: the heap as it comes; auto: steady "
                             "where glibc runs")
    parser.add_argument("--json", help="also write the report (with the machine header) to this file")
    args = parser.parse_args(argv)

    names = available() if args.student == "all" else [n.strip() for n in args.student.split(",")]
    unknown = [n for n in names if n not in available()]
    try:
        if unknown:
            raise ValueError(f"unknown student {unknown[0]!r}; choose one of {', '.join(available())} or all")
        if args.teacher and args.teacher_shape:
            raise ValueError("--teacher and --teacher-shape both name the teacher; give one of them")
        lengths = _parse_lengths(args.lengths, "--lengths")
        train_lengths = _parse_lengths(args.train_lengths, "--train-lengths")
        contexts = _parse_lengths(args.decode_contexts, "--decode-contexts")
        if min(args.repeats, args.decode_steps) < 1 or (args.threads is not None and args.threads < 1):
            raise ValueError("--repeats, --decode-steps and --threads must be ≥ 1")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device")
        heap_used, heap = use_heap(args.heap)
    except (ValueError, RuntimeError) as err:  # torch.device raises RuntimeError for a malformed name
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    # Positions the run reaches: the longest forward, or a decode context plus its timed steps.
    positions_needed = max(max(lengths), max(train_lengths), max(contexts) + args.decode_steps)

    from bench.data.teacher import EMBEDDED_TEACHER

    try:
        if args.teacher_shape:
            source = f"untrained LlamaConfig of the {args.teacher_shape} shape (--teacher-shape)"
            teacher = shaped_teacher(args.teacher_shape).to(device, dtype)
        elif args.teacher or EMBEDDED_TEACHER.is_dir():
            source = args.teacher or "embedded (bench/data/embedded_teacher)"  # no local paths in results
            teacher = load_teacher(args.teacher or str(EMBEDDED_TEACHER), dtype=dtype).to(device)
        else:
            source = "untrained LlamaConfig of the embedded teacher's shape (bench/data/embedded_teacher absent)"
            teacher = embedded_shape_teacher().to(device, dtype)
    except (ValueError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    declared_positions = teacher.config.max_position_embeddings
    if positions_needed > declared_positions:  # timing only; the weights were not trained this far
        teacher.config.max_position_embeddings = positions_needed
    config = teacher.config
    teacher_record = {
        "source": source, "model_type": config.model_type,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "vocab_size": config.vocab_size, "max_position_embeddings": config.max_position_embeddings,
        "max_position_embeddings_declared": declared_positions,
        "max_position_embeddings_raised_for_timing": positions_needed > declared_positions,
    }
    settings = {"batch_size": 1, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
                "repeats": args.repeats, "warmup": 1, "lengths": lengths, "train_lengths": train_lengths,
                "decode_contexts": contexts,
                "decode_steps": args.decode_steps, "prefill_chunk": PREFILL_CHUNK, "prefill_logits": args.prefill_logits,
                "init": args.init, "seed": 0, "heap": heap_used, "mallopt": heap,
                "students": names}
    measured_on = machine()  # at the start: the commit the timed code came from, whatever is committed during the run
    print(header())
    print(f"teacher: {source} ({teacher_record['attn_implementation']}), dtype {args.dtype}, "
          f"threads {settings['threads']}", flush=True)

    entries = {"floor": (build_floor(teacher).to(device), "floor"), "teacher": (teacher, "teacher")}
    for name in names:
        entries[name] = (build_student(teacher, name, init=args.init, seed=0).eval().to(device), "student")
    with MachineActivity() as activity:
        models = measure_side_by_side(entries, lengths, contexts, args.repeats, dtype, train_lengths=train_lengths,
                                      decode_steps=args.decode_steps, prefill_logits=args.prefill_logits)
    del entries
    for name, result in models.items():
        _print_result(name, result)
    ratios = compare(models)
    targets = check_targets(models, ratios)
    _print_ratios(ratios, targets)
    print(f"machine: {describe(activity.report())}")
    report = {"schema": REPORT_SCHEMA, "machine": measured_on, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "activity": activity.report(), "settings": settings, "teacher": teacher_record,
              "models": models, "ratios": ratios, "targets": targets}
    validate(report)
    if args.json:
        from bench.files import atomic_write_json
        atomic_write_json(Path(args.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
