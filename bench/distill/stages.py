"""Distillation stages: registry entries sharing one step signature.

A stage names what it trains (`trainable`), optionally builds extra trainable modules (e.g. a head
projection), and computes `loss(batch) -> (loss, metrics)` from the student, the frozen teachers and the
token batch. Adding a stage is one `@register_stage` function.

Reference: MOHAWK (Bick et al. 2024) stage 1 matrix mixing, stage 2 hidden-state alignment, stage 3
end-to-end distillation; Haller et al. 2025 apply them to eight subquadratic students.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from bench.distill import losses
from kernels import fused_distillation_loss, mixer_matrix_loss
from students.teacher_attention import compiled_attention

MATRIX_LOSSES = ("frobenius", "output_mse")


@dataclass
class StageOptions:
    """Loss settings shared by the stages (CLI flags of `bench.run`)."""

    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.2
    matrix_loss: str = "frobenius"  # matrix_mixing: Frobenius between matrices, or MSE of mixer outputs
    attention_alpha: float = 0.5  # attention_transfer: α·τ²·KL + (1 − α)·attention-map loss
    teacher_weights: tuple[float, ...] = ()  # multi_teacher priors (default uniform)
    entropy_sharpness: float = 1.0  # multi_teacher: per-token weights ∝ prior · exp(−entropy / sharpness)
    feature_weight: float = 0.1  # multi_teacher: weight of hidden-feature alignment
    fused_loss: bool = True  # end_to_end: chunked fused loss from hidden states (False: materialised logits)
    fused_matrix_loss: bool = True  # matrix_mixing: tiled loss from q/k/decays, no (B, H, T, T) matrices


@dataclass
class Batch:
    """Everything a stage step sees."""

    input_ids: torch.Tensor
    student: nn.Module
    teachers: list[nn.Module]
    extras: nn.Module | None
    options: StageOptions


@dataclass(frozen=True)
class Stage:
    name: str
    loss: Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]
    trainable: str  # "mixers" (the mixers only, the rest stays the teacher's) or "all"
    needs_attention_weights: bool = False
    build_extras: Callable[[nn.Module, list[nn.Module], StageOptions], nn.Module | None] = lambda s, t, o: None
    min_teachers: int = 1
    doc: str = ""


STAGES: dict[str, Stage] = {}
# The reference token split (MOHAWK: 80M / 160M / 2.76B of 3B); other stages weigh like end_to_end.
# Attention-output alignment (RADLADS' stage 1, LoLCATs' attention transfer) weighs like matrix mixing.
REFERENCE_SPLIT = {"matrix_mixing": 0.026, "attention_output": 0.026, "hidden_alignment": 0.053, "end_to_end": 0.92}
# The stages that train each layer's mixer on its own loss from one teacher forward (no backward through the
# rest of the model): cheap per token, and where a small budget should go first.
LAYER_LOCAL = ("matrix_mixing", "attention_output", "hidden_alignment")


def register_stage(name: str, trainable: str, **kwargs):
    def wrap(loss_fn):
        STAGES[name] = Stage(name=name, loss=loss_fn, trainable=trainable, doc=(loss_fn.__doc__ or "").strip(),
                             **kwargs)
        return loss_fn
    return wrap


# ------------------------------------------------------------------------------------------- teacher trace
@dataclass
class TeacherTrace:
    """A teacher forward pass, recorded per decoder layer through forward hooks (no modeling code forked)."""

    logits: torch.Tensor | None  # None when traced with logits=False
    layer_inputs: list[torch.Tensor] = field(default_factory=list)
    layer_outputs: list[torch.Tensor] = field(default_factory=list)
    attention_outputs: list[torch.Tensor] = field(default_factory=list)  # after o_proj
    attention_weights: list[torch.Tensor | None] = field(default_factory=list)  # (B, H, T, T), eager only
    final_hidden: torch.Tensor | None = None  # after the final norm


@torch.no_grad()
def trace_teacher(teacher: nn.Module, input_ids: torch.Tensor, logits: bool = True) -> TeacherTrace:
    """The teacher's forward pass with every layer's input, output and attention recorded. With `logits=False`
    the LM head projects no position (`logits_to_keep` of none, so FSDP's root hooks still run): the
    layer-local stages never read logits, and the head is a quarter of the embedded teacher's forward FLOPs."""
    layers = teacher.model.layers
    n = len(layers)
    inputs, outputs, attn_outputs, attn_weights = [None] * n, [None] * n, [None] * n, [None] * n

    def layer_hook(idx):
        def hook(module, args, kwargs, output):
            inputs[idx] = args[0] if args else kwargs["hidden_states"]
            outputs[idx] = output[0] if isinstance(output, tuple) else output
        return hook

    def attention_hook(idx):
        def hook(module, args, kwargs, output):
            attn_outputs[idx], attn_weights[idx] = output[0], output[1]
        return hook

    handles = [layer.register_forward_hook(layer_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles += [layer.self_attn.register_forward_hook(attention_hook(i), with_kwargs=True)
                for i, layer in enumerate(layers)]
    try:
        head = {} if logits else {"logits_to_keep": torch.empty(0, dtype=torch.long, device=input_ids.device)}
        out = teacher(input_ids=input_ids, output_hidden_states=True, **head)
    finally:
        for handle in handles:
            handle.remove()
    return TeacherTrace(out.logits if logits else None, inputs, outputs, attn_outputs, attn_weights,
                        out.hidden_states[-1])


@contextlib.contextmanager
def teacher_attention(teachers: list[nn.Module], needs_weights: bool):
    """The teachers' attention for a stage: eager (the only kind that returns its probabilities) where the stage
    needs them, else the compiled causal attention on CPU (`students.teacher_attention`: forward only, as a frozen
    teacher's is; sdpa for every call it does not cover)."""
    if not needs_weights:
        with compiled_attention(teachers):
            yield
        return
    previous = [t.config._attn_implementation for t in teachers]
    for teacher in teachers:
        teacher.set_attn_implementation("eager")
    try:
        yield
    finally:
        for teacher, implementation in zip(teachers, previous):
            teacher.set_attn_implementation(implementation)


_QK_RECORDS: list[dict[int, tuple]] = []  # open `capture_teacher_qk` records, innermost last


def _capture_qk_attention(module, query, key, value, attention_mask, **kwargs):
    """An attention implementation for transformers' AttentionInterface: records the post-RoPE query and
    key (B, H, T, D) per layer, then runs sdpa (no T × T probabilities are formed)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _QK_RECORDS:
        scaling = kwargs.get("scaling")
        _QK_RECORDS[-1][module.layer_idx] = (query, key, module.scaling if scaling is None else scaling)
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def _register_capture() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("capture_qk", _capture_qk_attention)


@contextlib.contextmanager
def capture_teacher_qk(teacher: nn.Module):
    """Within the block the teacher runs `capture_qk` attention; yields {layer: (query, key, scaling)}."""
    _register_capture()
    previous, record = teacher.config._attn_implementation, {}
    teacher.set_attn_implementation("capture_qk")
    _QK_RECORDS.append(record)
    try:
        yield record
    finally:
        _QK_RECORDS.remove(record)
        teacher.set_attn_implementation(previous)


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean()


def replaced_layers(student: nn.Module) -> list[tuple[int, nn.Module]]:
    """(index, decoder layer) of the layers whose attention was replaced: the kept attention layers of a hybrid
    are the teacher's own, so the layer-local losses leave them out (they would be 0 and cost a forward)."""
    kept = set(getattr(student, "kept_layer_indices", ()))
    return [(idx, layer) for idx, layer in enumerate(student.model.layers) if idx not in kept]


# ------------------------------------------------------------------------------------------------ stages
@register_stage("matrix_mixing", trainable="mixers", needs_attention_weights=True)
def matrix_mixing(batch: Batch):
    """Per layer, on the teacher's hidden state: ‖A_teacher − M_student‖²_F (or mixer-output MSE).

    With `fused_matrix_loss` (default) and mixers that expose `matrix_terms`, neither matrix is formed:
    the teacher's post-RoPE q/k are captured (sdpa attention) and `kernels.mixer_matrix_loss` recomputes
    both matrices tile by tile (delta-rule students: the teacher's matrix is formed, the student's is built
    from chunk blocks).
    """
    student, per_layer = batch.student, []
    layers = replaced_layers(student)
    if (batch.options.matrix_loss == "frobenius" and batch.options.fused_matrix_loss
            and all(layer.mixer.supports_matrix_terms for _, layer in layers)):
        with capture_teacher_qk(batch.teachers[0]) as captured:
            trace = trace_teacher(batch.teachers[0], batch.input_ids, logits=False)
        for idx, layer in layers:
            query, key, scaling = captured[idx]
            terms = layer.mixer.matrix_terms(layer.input_layernorm(trace.layer_inputs[idx]))
            per_layer.append(mixer_matrix_loss(query.transpose(1, 2), key.transpose(1, 2), **terms,
                                               teacher_scale=scaling))
        loss = _mean(per_layer)
        return loss, {"matrix": loss.item(), **{f"layer{i}": v.item() for (i, _), v in zip(layers, per_layer)}}
    trace = trace_teacher(batch.teachers[0], batch.input_ids, logits=False)
    for idx, layer in layers:
        x = layer.input_layernorm(trace.layer_inputs[idx])
        if batch.options.matrix_loss == "frobenius":
            per_layer.append(losses.matrix_distance(trace.attention_weights[idx], layer.mixer.mixer_matrix(x)))
        else:
            per_layer.append(losses.relative_l2(trace.attention_outputs[idx], layer.mixer(x)[0]))
    loss = _mean(per_layer)
    return loss, {"matrix": loss.item(), **{f"layer{i}": v.item() for (i, _), v in zip(layers, per_layer)}}


@register_stage("attention_output", trainable="mixers")
def attention_output(batch: Batch):
    """Per layer, on the teacher's normalised hidden state: relative MSE between the student mixer's output and
    the teacher attention's output (after its output projection). LoLCATs' attention transfer (Zhang et al.
    2024, eq. 4) and RADLADS' stage 1 (Goldstein et al. 2025): the mixer alone, no MLP, no other layer."""
    trace = trace_teacher(batch.teachers[0], batch.input_ids, logits=False)
    layers = replaced_layers(batch.student)
    per_layer = [losses.relative_l2(trace.attention_outputs[idx], layer.mixer(layer.input_layernorm(trace.layer_inputs[idx]))[0])
                 for idx, layer in layers]
    loss = _mean(per_layer)
    return loss, {"attention_output": loss.item(), **{f"layer{i}": v.item() for (i, _), v in zip(layers, per_layer)}}


@register_stage("hidden_alignment", trainable="mixers")
def hidden_alignment(batch: Batch):
    """Per layer, from the teacher's input to that layer: relative L2 to the teacher's next hidden state."""
    trace = trace_teacher(batch.teachers[0], batch.input_ids, logits=False)
    layers = replaced_layers(batch.student)
    per_layer = [losses.relative_l2(trace.layer_outputs[idx], batch.student.layer_forward(idx, trace.layer_inputs[idx])[0])
                 for idx, _ in layers]
    loss = _mean(per_layer)
    return loss, {"hidden": loss.item(), **{f"layer{i}": v.item() for i, v in enumerate(per_layer)}}


def _final_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads (after the final norm), without forming the logits."""
    if hasattr(model, "final_hidden"):  # a student: its decoder layers hold mixers
        return model.final_hidden(input_ids)
    return model.model(input_ids=input_ids, use_cache=False).last_hidden_state  # HF: norm applied


def _plain_head(model: nn.Module) -> bool:
    """Logits are exactly hidden @ lm_head.weightᵀ (a bias-free linear head, no soft-capping or scaling)."""
    head, config = getattr(model, "lm_head", None), getattr(model, "config", None)
    return (isinstance(head, nn.Linear) and head.bias is None and hasattr(model, "model")
            and not any(getattr(config, a, None) for a in ("final_logit_softcapping", "logit_scale", "logits_scaling")))


@register_stage("end_to_end", trainable="all")
def end_to_end(batch: Batch):
    """Per-token KL(teacher ‖ student) at temperature τ (times τ²) plus weighted CE.

    With `fused_loss` (default) the student's logits are never materialised: the fused kernel forms them
    chunk by chunk from the final hidden states and the LM-head weight (and the teacher's likewise, unless
    the teacher is FSDP-sharded, whose head weight no single rank holds whole; then its logits are used).
    """
    o, teacher, student = batch.options, batch.teachers[0], batch.student
    if not (o.fused_loss and _plain_head(student)):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=batch.input_ids).logits
        student_logits = student(input_ids=batch.input_ids).logits
        return losses.distillation_loss(teacher_logits, student_logits, batch.input_ids, o.temperature,
                                        o.kl_weight, o.ce_weight)
    from torch.distributed.fsdp import FSDPModule

    teacher_inputs = {}
    with torch.no_grad():
        if isinstance(teacher, FSDPModule) or not _plain_head(teacher):
            teacher_inputs["teacher_logits"] = teacher(input_ids=batch.input_ids).logits
        else:
            teacher_inputs.update(teacher_hidden=_final_hidden(teacher, batch.input_ids),
                                  teacher_weight=teacher.lm_head.weight)
    hidden = _final_hidden(student, batch.input_ids)
    device = hidden.device.type  # under bf16 autocast the logit products run in bf16 too (softmax and sums fp32)
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    return fused_distillation_loss(hidden, student.lm_head.weight, batch.input_ids, **teacher_inputs,
                                   temperature=o.temperature, kl_weight=o.kl_weight, ce_weight=o.ce_weight,
                                   matmul_dtype=matmul_dtype)


class HeadProjection(nn.Module):
    """Learned (student heads × teacher heads) mixing per layer, initialised to group averaging."""

    def __init__(self, num_layers: int, student_heads: int, teacher_heads: int):
        super().__init__()
        init = torch.zeros(student_heads, teacher_heads)
        for s in range(student_heads):  # student head s starts as the mean of "its" teacher heads
            lo = s * teacher_heads // student_heads
            hi = max(lo + 1, (s + 1) * teacher_heads // student_heads)
            init[s, lo:hi] = 1.0 / (hi - lo)
        self.weight = nn.Parameter(init.repeat(num_layers, 1, 1))

    def forward(self, idx: int, attention: torch.Tensor) -> torch.Tensor:
        return torch.einsum("st,btij->bsij", self.weight[idx], attention.float())


def _attention_extras(student, teachers, options):
    teacher_heads = teachers[0].config.num_attention_heads
    return HeadProjection(len(student.model.layers), student.mixers[0].config.num_heads, teacher_heads)


@register_stage("attention_transfer", trainable="all", needs_attention_weights=True,
                build_extras=_attention_extras)
def attention_transfer(batch: Batch):
    """α·τ²·KL + (1 − α)·attention-map loss, the teacher's maps through a learned head projection.

    Seed: hybrid KD with attention-map matching across head counts (AfroXLMR-Comet). The student's
    matrices come from its own forward pass, unlike matrix_mixing which feeds teacher states.
    """
    trace = trace_teacher(batch.teachers[0], batch.input_ids)
    student, o = batch.student, batch.options
    x = student.model.embed_tokens(batch.input_ids)
    per_layer, kept = [], set(getattr(student, "kept_layer_indices", ()))
    for idx, layer in enumerate(student.model.layers):
        if idx not in kept:
            matrix = layer.mixer.mixer_matrix(layer.input_layernorm(x))
            per_layer.append(losses.matrix_distance(batch.extras(idx, trace.attention_weights[idx]), matrix))
        x, _ = student.layer_forward(idx, x)
    logits = student.lm_head(student.model.norm(x))
    kl = losses.token_kl(trace.logits, logits, o.temperature)
    attention = _mean(per_layer)
    loss = o.attention_alpha * kl + (1 - o.attention_alpha) * attention
    return loss, {"kl": kl.item(), "attention": attention.item()}


class FeatureProjections(nn.Module):
    """One linear map per teacher from the student's final hidden width to that teacher's."""

    def __init__(self, student_width: int, teacher_widths: list[int]):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(student_width, width, bias=False) for width in teacher_widths)
        for linear in self.maps:
            if linear.weight.shape[0] == linear.weight.shape[1]:
                nn.init.eye_(linear.weight)


def _multi_teacher_extras(student, teachers, options):
    return FeatureProjections(student.config.hidden_size, [t.config.hidden_size for t in teachers])


@register_stage("multi_teacher", trainable="all", build_extras=_multi_teacher_extras, min_teachers=2)
def multi_teacher(batch: Batch):
    """KL to an entropy-weighted fusion of several teachers, plus CE and hidden-feature alignment.

    Seed: collaborative multi-teacher KD — weighted output fusion, feature alignment, per-token teacher
    weights from each teacher's confidence (low entropy → more weight).
    """
    o = batch.options
    with torch.no_grad():
        outputs = [t(input_ids=batch.input_ids, output_hidden_states=True) for t in batch.teachers]
    prior = torch.tensor(o.teacher_weights or [1.0] * len(outputs))
    weights = losses.entropy_weights([out.logits for out in outputs], prior / prior.sum(), o.temperature,
                                     o.entropy_sharpness)
    fused = losses.fused_teacher_probs([out.logits for out in outputs], weights, o.temperature)
    student_out = batch.student(input_ids=batch.input_ids, output_hidden_states=True)
    loss, metrics = losses.distillation_loss(None, student_out.logits, batch.input_ids, o.temperature,
                                             o.kl_weight, o.ce_weight, teacher_probs=fused)
    hidden = student_out.hidden_states[-1]
    features = sum(p * losses.relative_l2(out.hidden_states[-1], projection(hidden))
                   for p, out, projection in zip(prior / prior.sum(), outputs, batch.extras.maps))
    metrics.update(features=features.item(), **{f"weight{i}": w.mean().item() for i, w in enumerate(weights)})
    return loss + o.feature_weight * features, metrics


class StageModule(nn.Module):
    """Student + stage extras as one module whose forward is the stage loss (what DDP wraps)."""

    def __init__(self, stage: Stage, student: nn.Module, teachers: list[nn.Module], options: StageOptions):
        super().__init__()
        self.stage, self.student, self.options = stage, student, options
        self.extras = stage.build_extras(student, teachers, options)
        self._teachers = teachers  # a plain list: frozen teachers are not parameters of this module

    def trainable_parameters(self) -> list[nn.Parameter]:
        # A hybrid's kept attention layers are the teacher's own and stay frozen.
        if self.stage.trainable == "mixers":
            mixers = getattr(self.student, "student_mixers", None) or self.student.mixers
            params = [p for mixer in mixers for p in mixer.parameters()]
        else:
            kept = set(map(id, getattr(self.student, "kept_parameters", dict)().values()))
            params = [p for p in self.student.parameters() if id(p) not in kept]
        return params + (list(self.extras.parameters()) if self.extras is not None else [])

    def forward(self, input_ids: torch.Tensor):
        return self.stage.loss(Batch(input_ids, self.student, self._teachers, self.extras, self.options))
