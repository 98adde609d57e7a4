"""`python -m bench.run --student mamba --init qkv_copy`: one distillation run, end to end.

teacher → student (surgery + init) → stages → evaluation → throughput → record → leaderboard row.
Under `torchrun --nproc_per_node N` the same command trains with DDP (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from bench import provenance
from bench.data import packing as data_lib
from bench.distill import loop as train_lib
from bench.distill import losses
from bench.distill import stages as stage_lib
from bench.errors import BenchError, Parser, UsageError, fail, set_threads
from bench.files import Busy, atomic_directory, atomic_write_json, clear_staging, exclusive
from bench.perf.activity import MachineActivity

INITS = ("random", "qkv_copy", "matrix_mixing", "qkv_copy+matrix_mixing")
KEEP_SELECT = ("first", "last", "uniform", "kl", "recall")
RANKED = ("kl", "recall")  # selections that rank layers by one short run per layer
EMBEDDED = "embedded"
DTYPES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Preset:
    """Token budget and batch shape; per-stage peak learning rates."""

    tokens: int
    seq_len: int
    batch_size: int
    lr: dict = field(default_factory=dict)
    eval_blocks: int = 32
    recall_lengths: tuple[int, ...] = (256, 512, 1024)
    recall_docs: int = 20
    checkpoint_every: int = 50
    throughput_lengths: tuple[int, ...] = (256, 512, 1024)
    decode_contexts: tuple[int, ...] = (256, 1024)
    stage_steps: dict = field(default_factory=dict)  # fixed steps per stage; the other stages share the rest
    align_first: tuple[str, ...] = ()  # layer-local stages every pipeline runs before hidden alignment
    probe_docs: int = 8  # recall documents per kind probed at every checkpoint (0: no probe)
    recall_fraction: float = 0.25  # share of the training text that is recall documents (MQAR, passkey)
    doc: str = ""


_LR_CPU = {"matrix_mixing": 3e-3, "attention_output": 3e-3, "hidden_alignment": 3e-3, "end_to_end": 1e-3,
           "attention_transfer": 1e-3, "multi_teacher": 1e-3}
PRESETS = {
    "tiny": Preset(tokens=40 * 4 * 32, seq_len=32, batch_size=4, lr=_LR_CPU, eval_blocks=4, recall_lengths=(32,),
                   recall_docs=2, checkpoint_every=5, throughput_lengths=(32, 64), decode_contexts=(32, 64), probe_docs=2,
                   doc="seconds; for tests"),
    # The recall study (results/research/recall/): layer-local attention-output alignment trained to a plateau
    # on a recall-rich mixture, then hidden alignment, then end-to-end distillation with the rest.
    "default": Preset(tokens=3_000_000, seq_len=512, batch_size=8, lr=_LR_CPU, recall_fraction=0.75,
                      stage_steps={"matrix_mixing": 100, "attention_output": 200, "hidden_alignment": 100},
                      align_first=("attention_output",), throughput_lengths=(512, 1024, 2048),
                      doc="about 14 minutes on 2 CPU cores with the embedded teacher (bf16 autocast)"),
    # The default recipe at a fifth of its budget, so the study's grid (72 runs) fits in hours on 2 cores.
    "grid": Preset(tokens=600_000, seq_len=512, batch_size=8, lr=_LR_CPU, recall_fraction=0.75,
                   stage_steps={"matrix_mixing": 20, "attention_output": 40, "hidden_alignment": 20},
                   align_first=("attention_output",), throughput_lengths=(512, 1024, 2048),
                   doc="the default recipe at a fifth of its tokens: about 3 minutes on 2 CPU cores"),
    # MOHAWK's 3B tokens split 80M / 160M / 2.76B, with GPU-sized batches of 96 x 2048 tokens.
    "paper": Preset(tokens=3_000_000_000, seq_len=2048, batch_size=96,
                    lr={"matrix_mixing": 1e-3, "hidden_alignment": 1e-3, "end_to_end": 3e-4,
                        "attention_transfer": 3e-4, "multi_teacher": 3e-4},
                    eval_blocks=256, recall_lengths=(512, 1024, 2048, 4096), recall_docs=100,
                    checkpoint_every=500, throughput_lengths=(2048, 8192, 32768), decode_contexts=(2048, 32768),
                    doc="the reference study's proportions, for GPUs"),
}


# ----------------------------------------------------------------------------------------------- parsing
def build_parser() -> argparse.ArgumentParser:
    from students import available

    p = Parser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True, help=f"one of: {', '.join(available())}")
    p.add_argument("--init", default="qkv_copy", help=f"one of: {', '.join(INITS)}")
    p.add_argument("--teacher", action="append", default=None,
                   help="hub id or local directory (default: the embedded teacher); repeat for multi-teacher")
    p.add_argument("--dataset", default=data_lib.EMBEDDED, help="'shakespeare' (embedded), a hub id or a path")
    p.add_argument("--text-field", default="text")
    p.add_argument("--streaming", action="store_true", help="stream the dataset (needs --max-blocks)")
    p.add_argument("--max-blocks", type=int, default=None, help="cap on training blocks read")
    p.add_argument("--works-dir", default=None, help=argparse.SUPPRESS)  # embedded texts elsewhere (tests)
    p.add_argument("--preset", default="default", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--tokens", type=int, default=None, help="total token budget across stages")
    p.add_argument("--stage-steps", default=None, metavar="NAME=N,...",
                   help="fixed optimiser steps for some stages (the others share the rest of --tokens)")
    p.add_argument("--stage-tokens", default=None, metavar="NAME=N,...", help="as --stage-steps, in tokens")
    p.add_argument("--split", default="preset", choices=("preset", "proportional"),
                   help="proportional: every stage by MOHAWK's 2.6 / 5.3 / 92%% split, ignoring the preset's fixed steps")
    p.add_argument("--recall-fraction", type=float, default=None,
                   help="share of the training text that is recall documents (MQAR, passkey); default: the preset's")
    p.add_argument("--stages", default=None, help=f"comma list overriding the pipeline; from: {', '.join(stage_lib.STAGES)}")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (sequences)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate for every stage")
    p.add_argument("--schedule", default="cosine", help=f"one of: {', '.join(train_lib.SCHEDULES)}")
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=0.2)
    p.add_argument("--matrix-loss", default="frobenius", help=f"one of: {', '.join(stage_lib.MATRIX_LOSSES)}")
    p.add_argument("--attention-alpha", type=float, default=0.5)
    p.add_argument("--teacher-weights", default=None, help="comma list of prior weights per --teacher")
    p.add_argument("--entropy-sharpness", type=float, default=1.0)
    p.add_argument("--feature-weight", type=float, default=0.1)
    p.add_argument("--no-fused-loss", action="store_true",
                   help="end_to_end: materialise the (B, T, V) logits instead of the chunked fused loss")
    p.add_argument("--no-fused-matrix-loss", action="store_true",
                   help="matrix_mixing: materialise the (B, H, T, T) matrices instead of the tiled fused loss")
    p.add_argument("--mixer-option", action="append", default=[], metavar="KEY=VALUE",
                   help="student-specific option, e.g. feature_map=elu (repeatable)")
    p.add_argument("--keep-attention", default=None, metavar="I,J",
                   help="hybrid: these layer indices stay the teacher's softmax attention (frozen)")
    p.add_argument("--keep-attention-count", type=int, default=None, metavar="N",
                   help="hybrid: keep N layers as attention, chosen by --select")
    p.add_argument("--select", default="uniform", choices=KEEP_SELECT,
                   help="which layers --keep-attention-count keeps: by position, or kl: the layers whose replacement "
                        "alone raises the validation KL most after a short distillation (one run per layer), or "
                        "recall: the same runs ranked by the MQAR accuracy each loses")
    p.add_argument("--rank-tokens", type=int, default=None,
                   help="--select kl|recall: the token budget of each one-layer ranking run (default: a tenth of --tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 autocast on GPUs and CPUs with bf16 kernels, else fp32), fp32, bf16")
    p.add_argument("--output-dir", type=Path, default=Path("runs"), help="checkpoints, logs, the student")
    p.add_argument("--results-dir", type=Path, default=provenance.REPO_ROOT / "results", help="run records, leaderboard")
    p.add_argument("--run-name", default=None)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--stop-after", type=int, default=None, help="checkpoint and stop after N optimiser steps")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--probe-docs", type=int, default=None,
                   help="MQAR and passkey documents probed at the trained length at every checkpoint (0: none)")
    p.add_argument("--skip-eval", action="store_true", help="only the validation KL/perplexity")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard the frozen teachers with FSDP2 (for teachers too large to replicate); "
                        "the student trains with DDP")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for this process (default: torch's choice; give each of several runs its share)")
    return p


def _choice(value: str, valid, what: str) -> str:
    if value not in valid:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")
    return value


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@dataclass
class RunSettings:
    """Everything that defines a run, validated; recorded verbatim. `identity()` is what changes the result."""

    student: str
    init: str
    teachers: list[str]
    teacher_fingerprints: list[str]
    dataset: str
    data: dict  # text_field, streaming, max_blocks, works_dir
    preset: str
    tokens: int
    seq_len: int
    batch_size: int
    stages: list[str]
    stage_steps: dict  # stages with fixed steps (the others share the rest of the budget)
    keep: dict  # hybrid: {"layers": [...]} kept as attention, or {"count": N, "select": "kl", "rank_tokens": R}
    lrs: dict
    seed: int
    dtype: str
    schedule: str
    warmup_fraction: float
    weight_decay: float
    grad_clip: float
    options: dict
    mixer_options: dict
    run_name: str

    def identity(self) -> dict:
        """Every setting that changes what the run computes (not where it writes, nor how often it saves)."""
        identity = asdict(self)
        del identity["run_name"]
        return identity

    def config_hash(self) -> str:
        """Eight hex digits over the identity without the seed: runs that differ only in seed share it."""
        identity = {k: v for k, v in self.identity().items() if k != "seed"}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def default_stages(init: str, n_teachers: int, preset: Preset | None = None) -> list[str]:
    """init's matrix_mixing stage when named, the preset's layer-local stages, then hidden alignment, then
    end-to-end (or multi-teacher)."""
    return (["matrix_mixing"] if "matrix_mixing" in init else []) + list(preset.align_first if preset else ()) + \
        ["hidden_alignment", "multi_teacher" if n_teachers > 1 else "end_to_end"]


def split_budget(tokens: int, stages: list[str], tokens_per_step: int, fixed: dict | None = None) -> list[int]:
    """Steps per stage: stages in `fixed` take their given steps; the rest of the budget is split among the
    others by the reference proportions (MOHAWK's 2.6 / 5.3 / 92%)."""
    fixed = {name: steps for name, steps in (fixed or {}).items() if name in stages}
    free = [name for name in stages if name not in fixed]
    left = tokens - tokens_per_step * sum(fixed.values())
    if free and left < tokens_per_step * len(free):
        raise UsageError(f"token budget {tokens} is too small: the fixed stage budgets "
                         f"({', '.join(f'{k}={v}' for k, v in fixed.items())} steps) leave "
                         f"{max(left, 0)} tokens for {', '.join(free)}; raise --tokens or lower --stage-steps")
    weights = [stage_lib.REFERENCE_SPLIT.get(name, stage_lib.REFERENCE_SPLIT["end_to_end"]) for name in free]
    shares = {name: int(left * w / sum(weights)) // tokens_per_step for name, w in zip(free, weights)}
    if shares and min(shares.values()) < 1:
        small = min(shares, key=shares.get)
        need = tokens - left + math.ceil(tokens_per_step * sum(weights) / min(weights))
        raise UsageError(f"token budget {tokens} is too small: stage {small} gets less than one batch of "
                         f"{tokens_per_step} tokens; use --tokens {need} or more (or a smaller batch)")
    return [fixed[name] if name in fixed else shares[name] for name in stages]


def parse_stage_budget(text: str | None, flag: str, tokens_per_step: int = 1) -> dict:
    """`name=N,name=M` -> {name: steps}; a token budget is rounded down to whole steps (at least one)."""
    budget = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        _choice(name.strip(), stage_lib.STAGES, f"stage in {flag}")
        try:
            amount = int(value)
        except ValueError:
            raise UsageError(f"{flag} {item!r} is not NAME=INTEGER") from None
        if amount < 1:
            raise UsageError(f"{flag} {item!r}: the budget must be positive")
        budget[name.strip()] = max(1, amount // tokens_per_step)
    return budget


def _positive(name: str, value, allow_zero: bool = False):
    """Finite and > 0 (or ≥ 0): NaN, infinities and negatives are refused, never replaced by a default."""
    if value is not None and not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise UsageError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value}")
    return value


def teacher_layers(name: str) -> int:
    """The teacher's decoder depth, from its config alone (the weights are loaded later)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_teacher(name)).num_hidden_layers
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the config of teacher {name!r} ({str(error).splitlines()[0]})") from None


def keep_from_args(args, teacher: str, tokens: int) -> dict:
    """The hybrid's kept attention layers: explicit, by position (resolved now), or by KL (resolved by the run)."""
    from students.surgery import kept_layers

    if args.keep_attention is None and not args.keep_attention_count:
        return {}
    if args.keep_attention is not None and args.keep_attention_count is not None:
        raise UsageError("pass --keep-attention (indices) or --keep-attention-count with --select, not both")
    layers = teacher_layers(teacher)
    if args.keep_attention is not None:
        try:
            from students.modeling import check_keep_attention

            keep = check_keep_attention([int(x) for x in args.keep_attention.split(",") if x.strip()], layers)
        except ValueError as error:
            raise UsageError(f"--keep-attention {args.keep_attention!r}: {error}") from None
    else:
        if not 0 < args.keep_attention_count < layers:
            raise UsageError(f"--keep-attention-count must lie in 1..{layers - 1} (the teacher has {layers} layers)")
        if args.select in RANKED:
            rank_tokens = args.rank_tokens if args.rank_tokens is not None else max(1, tokens // 10)
            if rank_tokens < 1:
                raise UsageError(f"--rank-tokens must be positive, got {rank_tokens}")
            return {"count": args.keep_attention_count, "select": args.select, "rank_tokens": rank_tokens}
        keep = kept_layers(layers, args.keep_attention_count, args.select)
    if len(keep) >= layers:
        raise UsageError(f"--keep-attention keeps all {layers} layers: nothing would be distilled")
    return {"layers": keep} if keep else {}


def teacher_fingerprint(name: str) -> str:
    """The teacher's weight-file hash for a local directory (a retrained teacher is another run); a hub id as is."""
    path = resolve_teacher(name)
    if not Path(path).expanduser().is_dir():
        if path.startswith((".", "/", "~")) or os.path.exists(path):
            raise UsageError(f"teacher directory {path} does not exist; pass a directory written by save_pretrained "
                             f"or a hub id")
        return f"hub:{path}"
    return provenance.weights_fingerprint(path)


def resolved_dtype(requested: str) -> str:
    """The precision a run computes in: `--dtype auto` resolved on this machine (bf16 autocast where bf16
    matmuls pay, else fp32; `loop.use_bf16`). The run's identity holds it, so runs that `auto` sent to
    different precisions on different machines never share a name, a record or a checkpoint."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as `Distributed.from_env` picks
    return "bf16" if train_lib.use_bf16(requested, device) else "fp32"


def settings_from_args(args) -> RunSettings:
    from students import available, check_options

    student = _choice(args.student, available(), "student")
    init = _choice(args.init, INITS, "init")
    preset = PRESETS[_choice(args.preset, PRESETS, "preset")]
    _choice(args.schedule, train_lib.SCHEDULES, "schedule")
    _choice(args.matrix_loss, stage_lib.MATRIX_LOSSES, "matrix loss")
    _choice(args.dtype, DTYPES, "dtype")
    teachers = args.teacher or [EMBEDDED]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else \
        default_stages(init, len(teachers), preset)
    if not stages:
        raise UsageError(f"--stages is empty; choose from: {', '.join(stage_lib.STAGES)}")
    for name in stages:
        _choice(name, stage_lib.STAGES, "stage")
        if len(teachers) < stage_lib.STAGES[name].min_teachers:
            raise UsageError(f"stage {name} needs at least {stage_lib.STAGES[name].min_teachers} teachers; "
                             f"repeat --teacher")
    for name, value in (("--tokens", args.tokens), ("--seq-len", args.seq_len), ("--batch-size", args.batch_size),
                        ("--checkpoint-every", args.checkpoint_every), ("--stop-after", args.stop_after),
                        ("--threads", args.threads), ("--max-blocks", args.max_blocks)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value}")
    for name, value in (("--lr", args.lr), ("--temperature", args.temperature), ("--grad-clip", args.grad_clip),
                        ("--entropy-sharpness", args.entropy_sharpness)):
        _positive(name, value)
    for name, value in (("--weight-decay", args.weight_decay), ("--kl-weight", args.kl_weight),
                        ("--ce-weight", args.ce_weight), ("--feature-weight", args.feature_weight)):
        _positive(name, value, allow_zero=True)
    if args.probe_docs is not None and args.probe_docs < 0:
        raise UsageError(f"--probe-docs must be 0 or more, got {args.probe_docs}")
    if args.kl_weight == 0 and args.ce_weight == 0:
        raise UsageError("--kl-weight and --ce-weight are both 0: the end-to-end loss would be 0; set one above 0")
    if not (math.isfinite(args.warmup_fraction) and 0 <= args.warmup_fraction < 1):
        raise UsageError(f"--warmup-fraction must lie in [0, 1), got {args.warmup_fraction}")
    if not (math.isfinite(args.attention_alpha) and 0 <= args.attention_alpha <= 1):
        raise UsageError(f"--attention-alpha must lie in [0, 1], got {args.attention_alpha}")
    if args.streaming and args.max_blocks is None:
        raise UsageError("--streaming needs --max-blocks to bound how much is read")
    seq_len = args.seq_len if args.seq_len is not None else preset.seq_len
    batch_size = args.batch_size if args.batch_size is not None else preset.batch_size
    tokens = args.tokens if args.tokens is not None else preset.tokens
    stage_steps = {} if args.split == "proportional" else dict(preset.stage_steps)
    stage_steps.update(parse_stage_budget(args.stage_tokens, "--stage-tokens", seq_len * batch_size))
    stage_steps.update(parse_stage_budget(args.stage_steps, "--stage-steps"))
    stage_steps = {name: steps for name, steps in stage_steps.items() if name in stages}
    split_budget(tokens, stages, seq_len * batch_size, stage_steps)
    keep = keep_from_args(args, teachers[0], tokens)
    if keep.get("select") in RANKED:
        try:
            split_budget(keep["rank_tokens"], stages, seq_len * batch_size)
        except UsageError as error:
            raise UsageError(f"--rank-tokens: {error}".replace("use --tokens", "use --rank-tokens")) from None
    # The embedded mixture has recall documents by default; another dataset only when asked.
    recall_fraction = args.recall_fraction if args.recall_fraction is not None else \
        (preset.recall_fraction if args.dataset == data_lib.EMBEDDED else 0.0)
    if not (math.isfinite(recall_fraction) and 0 <= recall_fraction <= 0.9):
        raise UsageError(f"--recall-fraction must lie in [0, 0.9], got {recall_fraction}")
    weights = ()
    if args.teacher_weights:
        try:
            weights = tuple(float(w) for w in args.teacher_weights.split(","))
        except ValueError:
            weights = ()
        if len(weights) != len(teachers) or not all(math.isfinite(w) and w > 0 for w in weights):
            raise UsageError(f"--teacher-weights needs {len(teachers)} positive numbers, one per --teacher")
    mixer_options = {}
    for item in args.mixer_option:
        if "=" not in item:
            raise UsageError(f"--mixer-option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        mixer_options[key.strip()] = _parse_value(value.strip())
    try:
        check_options(student, mixer_options)
    except ValueError as error:
        raise UsageError(f"--mixer-option: {error}") from None
    options = asdict(stage_lib.StageOptions(
        temperature=args.temperature, kl_weight=args.kl_weight, ce_weight=args.ce_weight,
        matrix_loss=args.matrix_loss, attention_alpha=args.attention_alpha, teacher_weights=weights,
        entropy_sharpness=args.entropy_sharpness, feature_weight=args.feature_weight,
        fused_loss=not args.no_fused_loss, fused_matrix_loss=not args.no_fused_matrix_loss))
    lrs = {name: args.lr if args.lr is not None else preset.lr.get(name, preset.lr["end_to_end"]) for name in stages}
    data = {"text_field": args.text_field, "streaming": args.streaming, "max_blocks": args.max_blocks,
            "works_dir": args.works_dir, "recall_fraction": recall_fraction}
    settings = RunSettings(student, init, teachers, [teacher_fingerprint(t) for t in teachers], args.dataset, data,
                           args.preset, tokens, seq_len, batch_size, stages, stage_steps, keep, lrs, args.seed,
                           resolved_dtype(args.dtype),
                           args.schedule, args.warmup_fraction, args.weight_decay, args.grad_clip, options, mixer_options, "")
    teacher_tag = "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(t).name if t != EMBEDDED else t) for t in teachers)
    hybrid = ("+keep" + "-".join(map(str, keep["layers"])) if "layers" in keep else f"+keep{keep['count']}{keep['select']}") \
        if keep else ""
    settings.run_name = args.run_name or \
        f"{teacher_tag}__{student}{hybrid}__{init}__{args.preset}__{settings.config_hash()}__seed{args.seed}"
    if not re.fullmatch(r"[A-Za-z0-9_.+\-]+", settings.run_name):
        raise UsageError(f"--run-name {settings.run_name!r} may only hold letters, digits and _ . + -")
    return settings


def check_output_dir(path: Path, what: str) -> Path:
    """Refuse a path that is a file or cannot be created, before anything is written."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} exists and is not a directory; pass a directory")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"{what} {path} cannot be created (no writable parent); pass a writable directory")
    return path


def portable_path(path: Path) -> str:
    """The path relative to the working directory when under it, else `<output-dir>/<name>`: records stay
    free of machine-specific absolute paths."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return f"<output-dir>/{path.name}"


# ------------------------------------------------------------------------------------------------ running
def resolve_teacher(name: str) -> str:
    if name == EMBEDDED:
        from bench.data.teacher import EMBEDDED_TEACHER

        if not (EMBEDDED_TEACHER / "config.json").exists():
            raise UsageError(f"the embedded teacher is missing at {EMBEDDED_TEACHER}; rebuild it with "
                             f"`python -m bench.teacher` or pass --teacher")
        return str(EMBEDDED_TEACHER)
    return name


@torch.no_grad()
def validation_metrics(student, teacher, blocks: torch.Tensor, batch_size: int, temperature: float = 1.0) -> dict:
    """Per-token KL(teacher ‖ student), and both models' next-token perplexity, on validation blocks."""
    student.eval()
    kl = ce_student = ce_teacher = 0.0
    batches = range(0, len(blocks), batch_size)
    for start in batches:
        ids = blocks[start:start + batch_size]
        teacher_logits, student_logits = teacher(input_ids=ids).logits, student(input_ids=ids).logits
        kl += losses.token_kl(teacher_logits, student_logits, temperature).item() * len(ids)
        ce_student += losses.next_token_ce(student_logits, ids).item() * len(ids)
        ce_teacher += losses.next_token_ce(teacher_logits, ids).item() * len(ids)
    n = len(blocks)
    return {"val_kl": kl / n, "val_ppl_student": math.exp(ce_student / n), "val_ppl_teacher": math.exp(ce_teacher / n)}


def _without(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """argv without the given flags (`flag: True` when it takes a value), in both `--f v` and `--f=v` forms."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in item
            continue
        out.append(item)
    return out


def rank_layers(settings: RunSettings, args) -> tuple[list[int], dict]:
    """KL-guided choice of the attention layers to keep (arXiv 2512.20569): for each layer, a short run in
    which only that layer is replaced (every other kept), then its validation KL; the layers whose replacement
    alone costs the most KL stay attention. Each ranking run is an ordinary run with its own record, so they
    can also run in parallel beforehand (e.g. `bench.sweep --workers`); finished ones are reused.

    select recall: the same runs, each student's MQAR accuracy at the trained length on the evaluation's own
    documents; the layers whose replacement alone loses the most of it stay attention (on the embedded teacher
    the KL ranking keeps one layer of the two that retrieval needs: docs/results.md, hybrids)."""
    from students.surgery import kept_layers

    layers = teacher_layers(settings.teachers[0])
    base = _without(list(args.argv), {"--keep-attention": True, "--keep-attention-count": True, "--select": True,
                                      "--rank-tokens": True, "--tokens": True, "--run-name": True, "--resume": False,
                                      "--stop-after": True, "--stage-steps": True, "--stage-tokens": True,
                                      "--split": True, "--skip-eval": False, "--skip-throughput": False})
    scores, names = [], []
    for layer in range(layers):
        argv = base + ["--keep-attention", ",".join(str(j) for j in range(layers) if j != layer), "--tokens",
                       str(settings.keep["rank_tokens"]), "--split", "proportional", "--skip-eval", "--skip-throughput"]
        ranking_args = build_parser().parse_args(argv)
        ranking_args.argv = argv
        ranking = settings_from_args(ranking_args)
        path = check_output_dir(args.results_dir, "--results-dir") / "runs" / f"{ranking.run_name}.json"
        if not path.exists():
            print(f"ranking layer {layer}: {ranking.run_name}", file=sys.stderr, flush=True)
            run(ranking, ranking_args)
        scores.append(json.loads(path.read_text())["metrics"]["val_kl"])
        names.append(ranking.run_name)
    out = {"val_kl_with_only_this_layer_replaced": scores, "runs": names}
    if settings.keep["select"] == "recall":
        runs_dir = check_output_dir(args.output_dir, "--output-dir")
        mqar = [ranked_student_mqar(runs_dir / name / "student", settings.seq_len) for name in names]
        out["mqar_with_only_this_layer_replaced"] = mqar
        scores = [1.0 - accuracy for accuracy in mqar]
    keep = kept_layers(layers, settings.keep["count"], settings.keep["select"], scores=scores)
    return keep, {**out, "kept": keep}


def ranked_student_mqar(student_dir: Path, length: int) -> float:
    """Teacher-forced MQAR accuracy of a ranking run's student at `length` tokens, on the evaluation's documents
    (their own seed, so every ranking run is scored on the same ones)."""
    from bench.evaluation import tasks
    from bench.evaluation.scoring import load_model

    if not (student_dir / "config.json").exists():
        raise UsageError(f"--select recall: no student at {portable_path(student_dir)} (its ranking run's record "
                         f"exists but its --output-dir does not); rerun with that --output-dir or delete the record")
    model, tokenizer = load_model(str(student_dir))
    config = tasks.EvalConfig(recall_lengths=(length,))
    return tasks.recall_accuracy(model, tokenizer, tasks.recall_docs(tokenizer, config, "mqar", length),
                                 config.batch_size, config.max_batch_tokens)


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every setting that differs (nested dicts by dotted key)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple | list) and list(a) == list(b)):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class PhaseClock:
    """Seconds of this invocation by phase, back to back from the start: setup (teachers, data, surgery),
    training (with its checkpoints and recall probes), validation, evaluation_teacher, evaluation_student,
    throughput, save. They add up to the invocation's wall time, so a record says where a run's time went."""

    def __init__(self, started: float):
        self.seconds: dict[str, float] = {}
        self._mark = started

    def lap(self, phase: str) -> None:
        """Close `phase` at now: it gets the seconds since the previous lap (or the start)."""
        now = time.time()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._mark, 2)
        self._mark = now


def run(settings: RunSettings, args) -> dict:
    from transformers import AutoTokenizer

    from students.surgery import build_student, load_teacher

    output_dir = check_output_dir(args.output_dir, "--output-dir") / settings.run_name
    results_dir = check_output_dir(args.results_dir, "--results-dir")
    dist = train_lib.Distributed.from_env()
    if settings.batch_size % dist.world_size:
        raise UsageError(f"--batch-size {settings.batch_size} is not divisible by the {dist.world_size} processes")
    torch.manual_seed(settings.seed)
    started = time.time()
    teacher_paths = [resolve_teacher(t) for t in settings.teachers]
    try:
        teachers = [load_teacher(t, trust_remote_code=args.trust_remote_code).to(dist.device) for t in teacher_paths]
        tokenizer = AutoTokenizer.from_pretrained(teacher_paths[0], trust_remote_code=args.trust_remote_code)
    except (ValueError, OSError) as error:  # load_teacher's messages are already one line with the fix
        raise UsageError(str(error).splitlines()[0]) from None
    for path, teacher in zip(teacher_paths, teachers):
        data_lib.check_compatible(tokenizer, teacher.config, settings.seq_len)
        if teacher.config.vocab_size != teachers[0].config.vocab_size:
            raise UsageError(f"teacher {path} has vocabulary {teacher.config.vocab_size}, the first teacher "
                             f"{teachers[0].config.vocab_size}; multi-teacher runs need one shared tokenizer")
    spec = data_lib.DataSpec(dataset=settings.dataset, seq_len=settings.seq_len, **settings.data)
    preset = PRESETS[settings.preset]
    train_blocks = data_lib.load_blocks(spec, tokenizer, "train")
    # Validation blocks do not follow the training mixture: runs with other recall fractions compare on one set.
    eval_spec = replace(spec, max_blocks=preset.eval_blocks, recall_fraction=None)
    validation = data_lib.load_blocks(eval_spec, tokenizer, "validation")
    batches = data_lib.Batches(train_blocks, settings.batch_size, settings.seed)

    weights_init = "qkv_copy" if "qkv_copy" in settings.init else "random"
    keep, ranking = settings.keep.get("layers", []), None
    if settings.keep.get("select") in RANKED:
        keep, ranking = rank_layers(settings, args)
    student = build_student(teachers[0], settings.student, weights_init, settings.mixer_options,
                            seed=settings.seed, keep_attention=keep).to(dist.device)
    sharded = args.fsdp and dist.world_size > 1  # after surgery, which copies from the whole teacher
    train_teachers = [train_lib.shard_frozen(t) for t in teachers] if sharded else teachers
    steps = split_budget(settings.tokens, settings.stages, settings.seq_len * settings.batch_size,
                         settings.stage_steps)
    plans = [train_lib.StagePlan(name, n, settings.lrs[name]) for name, n in zip(settings.stages, steps)]
    bf16 = train_lib.use_bf16(settings.dtype, dist.device)
    if bf16 and dist.device.type == "cpu" and dist.is_main and not provenance.cpu_has_bf16_kernels():
        print("warning: this CPU has neither AVX512-BF16 nor AMX: --dtype bf16 runs in software at about a third of "
              "fp32's speed here (--dtype auto would pick fp32)", file=sys.stderr, flush=True)
    config = train_lib.TrainConfig(batch_size=settings.batch_size, seq_len=settings.seq_len,
                                   schedule=settings.schedule, warmup_fraction=settings.warmup_fraction,
                                   weight_decay=settings.weight_decay, grad_clip=settings.grad_clip, bf16=bf16,
                                   checkpoint_every=args.checkpoint_every or preset.checkpoint_every,
                                   stop_after=args.stop_after, progress=not args.no_progress)
    identity = settings.identity()
    lock = exclusive(output_dir.parent / f".{output_dir.name}.lock") if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            return _train_and_record(settings, args, output_dir, results_dir, dist, teachers, train_teachers,
                                     teacher_paths, tokenizer, spec, preset, validation, batches, student, plans,
                                     config, identity, sharded, bf16, started, keep, ranking)
    except Busy:
        raise UsageError(f"run {settings.run_name} is being written by another process; wait for it to finish "
                         f"or pass another --run-name") from None


def _train_and_record(settings, args, output_dir, results_dir, dist, teachers, train_teachers, teacher_paths,
                      tokenizer, spec, preset, validation, batches, student, plans, config, identity, sharded, bf16,
                      started, keep, ranking) -> dict | None:
    """Everything that writes: under the run's lock, after every input has been checked."""
    from students.surgery import load_teacher

    measured_on = provenance.machine()  # before training: the commit the run's code came from, whatever lands later

    resume, seconds_before, lr_history = None, 0.0, [[0, settings.lrs]]
    if dist.is_main:
        clear_staging(output_dir / "checkpoint")
        clear_staging(output_dir / "student")
    if args.resume:
        resume = train_lib.checkpoint_state(output_dir / "checkpoint")
        if resume is None:
            raise UsageError(f"--resume: no checkpoint under {portable_path(output_dir)}; run without --resume first")
        saved = dict(resume.get("identity") or {})
        # A lower learning rate is the way on after a NaN: it may change on resume, and the record keeps the history.
        lr_history = list(resume.get("lr_history") or [[0, saved.get("lrs")]])
        if saved.get("lrs") != settings.lrs:
            lr_history.append([sum(s["steps"] for s in resume["summaries"]) + resume["step"], settings.lrs])
        saved["lrs"] = settings.lrs
        differing = _differences(saved, json.loads(json.dumps(identity, default=str)))
        if differing:
            raise UsageError(f"--resume: the checkpoint of {settings.run_name} was written with other settings "
                             f"({'; '.join(differing[:4])}{'; ...' if len(differing) > 4 else ''}); resume with "
                             f"the original settings or start a new run without --resume")
        train_lib.load_student_weights(student, resume)
        seconds_before = float(resume.get("train_seconds", 0.0))
    elif dist.is_main and (output_dir / "log.jsonl").exists():
        (output_dir / "log.jsonl").unlink()  # a fresh run starts a fresh log
    output_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    options = stage_lib.StageOptions(**{**settings.options, "teacher_weights": tuple(settings.options["teacher_weights"])})
    invocation_started = time.time()
    activity = MachineActivity().start()  # what else ran on this process's CPUs meanwhile
    clock = PhaseClock(started)
    clock.lap("setup")

    def with_seconds(state: dict) -> dict:  # seconds trained over every invocation, carried by the checkpoint
        return {**state, "train_seconds": round(seconds_before + time.time() - invocation_started, 1),
                "lr_history": lr_history}

    probe = recall_probe(tokenizer, settings.seq_len, args.probe_docs if args.probe_docs is not None
                         else preset.probe_docs, settings.batch_size)
    summaries = train_lib.train(plans, student, train_teachers, options, batches, config, output_dir, dist, resume,
                                identity=identity, on_checkpoint=with_seconds, probe=probe)
    train_seconds = seconds_before + time.time() - invocation_started
    clock.lap("training")
    record = None
    if dist.is_main:
        if sharded:  # sharded teachers need every rank in each forward; evaluation runs on rank 0 alone
            teachers = [load_teacher(t, trust_remote_code=args.trust_remote_code).to(dist.device)
                        for t in teacher_paths]
        metrics = validation_metrics(student, teachers[0], validation, max(1, settings.batch_size))
        clock.lap("validation")
        evaluation, throughput = {}, {}
        if not args.skip_eval:
            evaluation = _evaluate(student, teachers[0], tokenizer, spec, preset, settings.teacher_fingerprints[0],
                                   results_dir, args.no_progress, clock)
        if not args.skip_throughput:
            throughput = _throughput(student, teachers[0], preset)
            clock.lap("throughput")
        with atomic_directory(output_dir / "student") as staging:  # never a half-written student
            student.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        clock.lap("save")
        record = {"run": settings.run_name, "settings": asdict(settings), "config_hash": settings.config_hash(),
                  "lr_history": lr_history,  # [global step, per-stage peak lrs] from each (re)start on
                  "teacher_fingerprint": "+".join(settings.teacher_fingerprints),
                  "plans": train_lib.plan_summary(plans, config),
                  "stages": summaries, "metrics": metrics, "evaluation": evaluation, "throughput": throughput,
                  "params": {"student": sum(p.numel() for p in student.parameters()),
                             "teacher": sum(p.numel() for p in teachers[0].parameters())},
                  "state_bytes_per_layer": [m.state_size(settings.seq_len) for m in student.mixers],
                  "keep_attention": keep, "keep_ranking": ranking,
                  "world_size": dist.world_size, "fsdp_teachers": sharded, "bf16": bf16, "dtype_requested": args.dtype,
                  "threads": torch.get_num_threads(),
                  "seconds": round(seconds_before + time.time() - started, 1),  # every invocation's training
                  "train_seconds": round(train_seconds, 1), "phase_seconds": clock.seconds,  # this invocation
                  "machine": measured_on, "activity": activity.stop().report(),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "output_dir": portable_path(output_dir)}
        atomic_write_json(results_dir / "runs" / f"{settings.run_name}.json", record)
        from bench.report import leaderboard

        leaderboard.rebuild(results_dir)
    dist.barrier()
    return record


PROBE_SEED = 70_000  # recall probe documents: a stream apart from training, evaluation and the teacher card


def recall_probe(tokenizer, length: int, n_docs: int, batch_size: int):
    """A callable giving MQAR and passkey accuracy at the trained length on `n_docs` fixed documents each, or
    None when n_docs is 0. Fixed documents, so the curve over checkpoints shows when copying emerges."""
    if n_docs <= 0:
        return None
    from bench.data import recall
    from bench.evaluation.tasks import recall_accuracy

    docs = {kind: recall.docs_for_length(kind, tokenizer, length, n_docs, seed=PROBE_SEED + length)
            for kind in recall.KINDS}
    return lambda model: {kind: recall_accuracy(model, tokenizer, kind_docs, batch_size)
                          for kind, kind_docs in docs.items()}


def _evaluate(student, teacher, tokenizer, spec, preset: Preset, teacher_fingerprint: str, results_dir: Path,
              quiet: bool, clock: PhaseClock) -> dict:
    """Downstream scores of teacher and student with their items, families and % recovered
    (`bench.evaluation.recovery`). The evaluation sets are drawn by EvalConfig's own seed, never the training
    seed, so every run of a grid meets the same documents; the teacher's scores come from
    `results/teacher_scores/` when this teacher was evaluated on this config before."""
    from bench.evaluation import recovery, tasks, teacher_cache

    config = tasks.EvalConfig(dataset=spec.dataset, works_dir=spec.works_dir, seq_len=spec.seq_len,
                              max_blocks=preset.eval_blocks, recall_lengths=preset.recall_lengths,
                              recall_docs=preset.recall_docs)
    teacher_scores, teacher_items, cached = teacher_cache.teacher_scores(
        teacher, tokenizer, config, teacher_fingerprint, results_dir / "teacher_scores", progress=not quiet)
    clock.lap("evaluation_teacher")  # near zero when the teacher's scores were on file
    student_scores, student_items = tasks.evaluate_with_items(student, tokenizer, config, progress=not quiet)
    clock.lap("evaluation_student")
    return {"teacher": teacher_scores, "student": student_scores,
            "recovered": recovery.recovered(student_scores, teacher_scores),
            "summary": recovery.summary(student_scores, teacher_scores, student_items, teacher_items),
            "items": {"teacher": teacher_items, "student": student_items},
            "config": asdict(config), "eval_seed": config.seed, "teacher_scores_file": cached}


def _throughput(student, teacher, preset: Preset) -> dict:
    from bench.perf import throughput as throughput_lib

    return throughput_lib.short_sweep(teacher, student, preset.throughput_lengths, preset.decode_contexts)


def quiet_libraries() -> None:
    """No progress bars from transformers and datasets (loading weights, writing shards, reading files)."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the ranking runs of --select kl reuse it
        set_threads(args.threads)
        if args.no_progress:
            quiet_libraries()
        settings = settings_from_args(args)
        record = run(settings, args)
    except BenchError as error:
        return fail(error)
    except train_lib.NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except train_lib.Interrupted as error:
        print(str(error), file=sys.stderr)
        return 0
    if record is not None:
        for stage in record["stages"]:  # the cost per token of each stage: tokens over its training steps' seconds
            flat = stage.get("plateau", {})
            print(f"  {stage['stage']:18} {stage['steps']:6} steps {stage['tokens']:>10,} tokens "
                  f"{stage.get('tokens_per_s') or 0:>8,.0f} tok/s  loss {stage['first_loss']} -> {stage['last_loss']}"
                  f"{'  (plateaued)' if flat.get('plateaued') else ''}")
        m = record["metrics"]
        print(f"{settings.run_name}: val KL {m['val_kl']:.4f}, student ppl {m['val_ppl_student']:.2f}, "
              f"teacher ppl {m['val_ppl_teacher']:.2f}, {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
