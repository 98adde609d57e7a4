"""The stage loop: AdamW, warm-up + cosine/WSD, clipping, autocast, checkpoints, resume, DDP, JSONL log.

Batches are a function of the global step (`data.Batches`) and every piece of optimiser state is in the
checkpoint, so a resumed run is the uninterrupted run, step for step.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from bench.distill import stages as stage_lib
from bench.files import atomic_directory, atomic_write_json, atomic_write_text, previous_version
from bench.provenance import cpu_has_bf16_kernels

SCHEDULES = ("cosine", "wsd")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; the message names the stage, step and the last good checkpoint."""


class Interrupted(RuntimeError):
    """`stop_after` steps were done and checkpointed; `--resume` continues."""


@dataclass
class StagePlan:
    name: str
    steps: int
    lr: float

    @property
    def stage(self) -> stage_lib.Stage:
        return stage_lib.STAGES[self.name]


@dataclass
class TrainConfig:
    batch_size: int  # global, across processes
    seq_len: int
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    bf16: bool = False
    log_every: int = 1
    checkpoint_every: int = 50
    stop_after: int | None = None  # total optimiser steps, then checkpoint and raise Interrupted
    progress: bool = True


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on CUDA."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
            else torch.device("cpu")
        if world > 1 and not torch_dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, device)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            value = value.detach().clone()
            torch_dist.all_reduce(value)
            value /= self.world_size
        return value

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()


def use_bf16(dtype: str, device: torch.device) -> bool:
    """`--dtype`: fp32, bf16, or auto = bf16 autocast where bf16 matmuls run at about twice fp32's rate: CUDA
    with bf16, or a CPU that multiplies bf16 in hardware (AVX512-BF16 or AMX). The recurrences and the fused
    losses keep their own precision inside (fp32 states and logits) whatever the autocast."""
    if dtype != "auto":
        return dtype == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # On CPU, bf16 held the validation KL and recall of the fp32 run within the seed spread
    # (results/research/recall/) at a higher training throughput (results/speed/).
    return device.type == "cpu" and cpu_has_bf16_kernels()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def shard_frozen(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 for a frozen teacher: each decoder layer and the rest are sharded across ranks and gathered
    layer by layer in the forward pass, so no rank holds the whole teacher. Works on CPU with gloo."""
    from torch.distributed.fsdp import fully_shard

    model.requires_grad_(False)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The stages' optimiser. torch's fused AdamW where it has one (CPU, CUDA): one kernel over all tensors in
    place of ~10 ops per tensor, 3-5× faster steps of the optimiser on the CPU, same update to ~1 ulp."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=fused)


def learning_rate(step: int, steps: int, peak: float, schedule: str, warmup_fraction: float) -> float:
    """Linear warm-up, then cosine to 10% of peak, or WSD (constant, then linear decay in the last 20%)."""
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
    decay_start = 0.8
    return peak if progress < decay_start else peak * max(0.0, (1 - progress) / (1 - decay_start))


# ------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(directory: Path, student, module, optimizer, state: dict, rng_state: torch.Tensor) -> None:
    """Student, stage extras, optimiser and RNG, position; swapped in whole so a crash keeps the last one."""
    with atomic_directory(directory) as staging:
        save_model(student, str(staging / "student.safetensors"))
        if module.extras is not None:
            save_model(module.extras, str(staging / "extras.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state}, staging / "optimizer.pt")
        atomic_write_json(staging / "state.json", state)


def checkpoint_state(directory: Path) -> dict | None:
    for candidate in (directory, previous_version(directory)):
        if (candidate / "state.json").exists():
            state = json.loads((candidate / "state.json").read_text())
            state["path"] = str(candidate)
            return state
    return None


def load_student_weights(student, state: dict) -> None:
    load_model(student, str(Path(state["path"]) / "student.safetensors"))


def _truncate_log(log_path: Path, global_step: int) -> None:
    """Drop log lines written after the checkpoint being resumed, so the log has no duplicate steps."""
    if log_path.exists():
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("global_step", 0) <= global_step]
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))


@dataclass
class StageClock:
    """Where a stage's wall time went, in seconds: its training steps (batch, forward, backward, update), the
    recall probes and the checkpoints, and all of it (`seconds`, which also covers building the stage).
    A checkpoint carries the clock, so a resumed stage's totals cover every invocation; `tokens_per_s` is
    the training rate (tokens over training-step seconds), not diluted by probes or checkpoint writes."""

    seconds: float = 0.0
    step_seconds: float = 0.0
    probe_seconds: float = 0.0
    checkpoint_seconds: float = 0.0

    def summary(self, tokens: int) -> dict:
        return {**{name: round(value, 2) for name, value in asdict(self).items()},
                "tokens_per_s": round(tokens / self.step_seconds, 1) if self.step_seconds > 0 else None}


PLATEAU_TOLERANCE = 0.02  # a stage has plateaued when its last tenth of steps is < 2% below the tenth before


def plateau(losses: list[float]) -> dict:
    """Whether a loss curve has flattened: the mean of its last 10% of steps against the 10% before (at least
    one step each); `plateaued` when it improved by less than PLATEAU_TOLERANCE of the earlier mean."""
    n = max(1, len(losses) // 10)
    if len(losses) < 2 * n or len(losses) < 2:
        return {"last": None, "before": None, "relative_drop": None, "plateaued": False}
    last, before = sum(losses[-n:]) / n, sum(losses[-2 * n:-n]) / n
    drop = (before - last) / abs(before) if before else 0.0
    return {"last": round(last, 6), "before": round(before, 6), "relative_drop": round(drop, 4),
            "plateaued": drop < PLATEAU_TOLERANCE}


def _all_finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


# ------------------------------------------------------------------------------------------------- loop
def train(plans: list[StagePlan], student, teachers, options: stage_lib.StageOptions, batches, config: TrainConfig,
          out_dir: Path, dist: Distributed, resume: dict | None = None, identity: dict | None = None,
          on_checkpoint=None, probe=None) -> list[dict]:
    """Run the stages in order; returns one summary per stage (steps, tokens, losses, time).

    A checkpoint holds weights whose loss was just seen to be finite: it is written after a step's forward
    pass has been checked and before that step's update, so the "last good checkpoint" named on a NaN is one
    that a resume with a lower learning rate can continue from. `identity` is stored with it (`--resume`
    compares it); `on_checkpoint(state)` may add to the stored state (e.g. the seconds trained so far).
    `probe(student) -> {name: value}` runs at every checkpoint and at the end of each stage (e.g. recall at
    the trained length, so a user sees when copying emerges); its values go to the log and the progress bar.
    """
    checkpoint_dir, log_path = out_dir / "checkpoint", out_dir / "log.jsonl"
    summaries: list[dict] = list(resume["summaries"]) if resume else []
    first_stage = resume["stage_index"] if resume else 0
    global_step = sum(s["steps"] for s in summaries) + (resume["step"] if resume else 0)
    if resume and dist.is_main:
        _truncate_log(log_path, global_step)
    for teacher in teachers:
        teacher.eval().requires_grad_(False)
    tokens_per_step = config.batch_size * config.seq_len
    extra = on_checkpoint or (lambda state: state)

    for stage_index in range(first_stage, len(plans)):
        plan = plans[stage_index]
        module = stage_lib.StageModule(plan.stage, student, teachers, options).to(dist.device)
        student.requires_grad_(False)
        params = module.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        optimizer = adamw(params, plan.lr, config.weight_decay)
        start, history, probes, shown, clock = 0, [], [], {}, StageClock()
        resumed_here = resume is not None and stage_index == first_stage
        if resumed_here:
            start, history = resume["step"], list(resume["history"])
            probes = list(resume.get("probes", []))
            clock = StageClock(**resume.get("stage_clock", {}))  # checkpoints written before the clock: from zero
            saved = torch.load(Path(resume["path"]) / "optimizer.pt", weights_only=True)
            torch.set_rng_state(saved["rng"])
            if start > 0:  # mid-stage; at a stage boundary the saved optimiser belongs to the previous stage
                optimizer.load_state_dict(saved["optimizer"])
                if module.extras is not None:
                    load_model(module.extras, str(Path(resume["path"]) / "extras.safetensors"))
        wrapped = module
        if dist.world_size > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                module, find_unused_parameters=plan.name == "matrix_mixing")  # matrices skip gates and outputs
        student.train()
        bar = tqdm(total=plan.steps, initial=start, desc=plan.name, disable=not (config.progress and dist.is_main),
                   dynamic_ncols=True)
        stage_started, seconds_before = time.time(), clock.seconds

        def run_probe(step: int) -> None:
            began = time.time()
            if dist.is_main:
                student.eval()
                with torch.no_grad():
                    values = {k: round(float(v), 4) for k, v in probe(student).items()}
                student.train()
                probes.append({"step": step, **values})
                shown.update({k: f"{v:.2f}" for k, v in values.items()})
                with open(log_path, "a") as handle:
                    handle.write(json.dumps({"stage": plan.name, "step": step, "global_step": global_step,
                                             "probe": values}) + "\n")
            clock.probe_seconds += time.time() - began

        def checkpoint(step: int, rng_state: torch.Tensor) -> None:
            began = time.time()
            if dist.is_main:
                clock.seconds = seconds_before + began - stage_started
                state = extra({"stage_index": stage_index, "step": step, "history": list(history),
                               "probes": list(probes), "summaries": summaries, "identity": identity,
                               "stage_clock": asdict(clock)})
                save_checkpoint(checkpoint_dir, student, module, optimizer, state, rng_state)
            dist.barrier()
            clock.checkpoint_seconds += time.time() - began

        with stage_lib.teacher_attention(teachers, plan.stage.needs_attention_weights):
            for step in range(start, plan.steps):
                step_started, overhead_before = time.time(), clock.probe_seconds + clock.checkpoint_seconds
                rng_state = torch.get_rng_state()  # before the forward: a resume repeats it exactly
                lr = learning_rate(step, plan.steps, plan.lr, config.schedule, config.warmup_fraction)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ids = batches(global_step, dist.rank, dist.world_size).to(dist.device)
                with autocast(dist.device, config.bf16):
                    loss, metrics = wrapped(ids)
                loss_value = dist.mean(loss.detach().float()).item()
                if not math.isfinite(loss_value):
                    kept = checkpoint_state(checkpoint_dir)
                    where = f"{kept['path']} (stage {plans[kept['stage_index']].name}, step {kept['step']})" \
                        if kept else "none yet"
                    raise NonFiniteLoss(f"stage {plan.name} step {step}: loss is {loss_value}; last good "
                                        f"checkpoint: {where}; continue from it with --resume and a lower --lr "
                                        f"(and this run's --run-name), or use --dtype fp32")
                # The weights that gave this finite loss are a good resumable point: written before the update.
                first_of_invocation = resumed_here and step == start
                stopping = config.stop_after is not None and global_step >= config.stop_after
                due = step == 0 or step % config.checkpoint_every == 0 or stopping
                if due and not first_of_invocation:
                    if probe is not None and step > 0 and step % config.checkpoint_every == 0:  # not at stops
                        run_probe(step)
                    checkpoint(step, rng_state)
                if stopping:
                    bar.close()
                    raise Interrupted(f"stopped after {global_step} steps; continue with --resume")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                global_step += 1
                # the step's own time: a probe or checkpoint taken inside it is not training
                elapsed = time.time() - step_started - (clock.probe_seconds + clock.checkpoint_seconds - overhead_before)
                clock.step_seconds += elapsed
                history.append(round(loss_value, 6))
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tokens_per_step / max(elapsed, 1e-9):.0f}", **shown)
                if dist.is_main and (step % config.log_every == 0 or step + 1 == plan.steps):
                    row = {"stage": plan.name, "step": step, "global_step": global_step, "loss": loss_value,
                           "lr": lr, "grad_norm": round(float(grad_norm), 6),
                           "tokens_per_s": round(tokens_per_step / max(elapsed, 1e-9), 1),
                           **{k: round(v, 6) for k, v in metrics.items()}}
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
        if probe is not None and plan.steps > 0:
            run_probe(plan.steps)
        bar.close()
        clock.seconds = seconds_before + time.time() - stage_started
        summaries.append({"stage": plan.name, "steps": plan.steps, "tokens": plan.steps * tokens_per_step,
                          "lr": plan.lr, "first_loss": history[0] if history else None,
                          "last_loss": history[-1] if history else None,
                          "mean_last_10": sum(history[-10:]) / max(1, len(history[-10:])),
                          "plateau": plateau(history), **clock.summary(plan.steps * tokens_per_step),
                          "losses": history, "probes": probes})
        if stage_index + 1 == len(plans) and dist.is_main and _all_finite(student.parameters()):
            # Training is over: a resume (e.g. after a crash during evaluation) goes straight to evaluation.
            state = extra({"stage_index": stage_index + 1, "step": 0, "history": [], "summaries": summaries,
                           "identity": identity})
            save_checkpoint(checkpoint_dir, student, module, optimizer, state, torch.get_rng_state())
        dist.barrier()  # a stop_after reached here stops at the next stage's first step, once it is checkpointed
    student.eval()
    return summaries


def plan_summary(plans: list[StagePlan], config: TrainConfig) -> list[dict]:
    return [{**asdict(p), "tokens": p.steps * config.batch_size * config.seq_len} for p in plans]
