"""Teacher -> student surgery: load a Llama-family teacher, swap its attention layers for a mixer (all, or all
but the kept ones of a hybrid), copy everything else, and initialise the mixer (`random` or `qkv_copy`),
logging each tensor copied.

The copy follows nanoGPT's `from_pretrained`: list both key sets, assert the shape of every pair, copy
under no_grad, and log `teacher.key -> student.key` with its shape.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from students.modeling import SUPPORTED_FAMILIES, StudentConfig, StudentForCausalLM, check_keep_attention
from students.registry import available

log = logging.getLogger("students.surgery")
INITS = ("random", "qkv_copy")
SELECTIONS = ("first", "last", "uniform", "kl", "recall")


def kept_layers(num_layers: int, count: int, select: str = "uniform", scores=None) -> list[int]:
    """`count` of `num_layers` layer indices to keep as attention (sorted), chosen by position or importance.

    first: 0 … count−1.  last: the final `count`.
    uniform: the middle of each of `count` equal segments, ⌊(2i + 1)·L / (2·count)⌋ for i < count; consecutive
      picks lie L/count ≥ 1 apart, so they are distinct: L = 4, count 2 → [1, 3]; L = 32, count 4 → [4, 12, 20, 28];
      count L/2 → every odd layer (Mamba-in-the-Llama's 50%).
    kl: the `count` layers with the largest `scores` (one per layer, e.g. the validation KL after replacing that
      layer alone and distilling briefly: arXiv 2512.20569), ties to the lower index.
    recall: the same rule on other scores, e.g. the recall lost when that layer alone is replaced.
    count 0 → [].
    """
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
    if not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= num_layers):
        raise ValueError(f"keep {count!r} attention layers: need an int in 0..{num_layers} (the teacher's layers)")
    if select == "first":
        return list(range(count))
    if select == "last":
        return list(range(num_layers - count, num_layers))
    if select == "uniform":
        return [(2 * i + 1) * num_layers // (2 * count) for i in range(count)]
    if scores is None or len(scores) != num_layers:
        raise ValueError(f"select={select!r} needs scores, one per layer ({num_layers}); got "
                         f"{'none' if scores is None else len(scores)}")
    return sorted(sorted(range(num_layers), key=lambda i: -float(scores[i]))[:count])


@dataclass
class CopyRecord:
    teacher_key: str | None  # None: initialised from the paper's recipe, no teacher counterpart
    student_key: str
    shape: tuple[int, ...]
    note: str = ""

    def __str__(self) -> str:
        source = self.teacher_key if self.teacher_key else "(init)"
        return f"{source} -> {self.student_key} {list(self.shape)}{' ' + self.note if self.note else ''}"


def load_teacher(name_or_path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> PreTrainedModel:
    """A Llama-family causal LM by hub id or local directory, through the real `from_pretrained` path."""
    if name_or_path.startswith((".", "/", "~")) or os.path.exists(name_or_path):  # a path, not a hub id
        if not os.path.isdir(os.path.expanduser(name_or_path)):
            raise ValueError(f"teacher directory {name_or_path!r} does not exist; pass a hub id or a directory "
                             f"written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load teacher config from {name_or_path!r}: {str(err).splitlines()[0]}") from None
    check_teacher_config(config)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, truncated or mismatched weights
        raise ValueError(f"cannot load teacher weights from {name_or_path!r} ({str(err).splitlines()[0]}); pass a "
                         f"directory with the complete weights written by save_pretrained, or a hub id") from None


def check_teacher_config(config) -> None:
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported teacher family {config.model_type!r}; supported Llama-family types: "
                         f"{', '.join(SUPPORTED_FAMILIES)}")
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if heads % kv_heads:
        raise ValueError(f"malformed teacher: num_attention_heads ({heads}) is not a multiple of "
                         f"num_key_value_heads ({kv_heads})")
    if head_dim % 2:
        raise ValueError(f"malformed teacher: head_dim {head_dim} is odd; rotary embeddings need an even head dim")


def _expand_kv(weight: torch.Tensor, kv_heads: int, heads: int) -> torch.Tensor:
    """(G·K, ...) -> (H·K, ...): repeat each key/value head for the query heads that share it, any head dim."""
    grouped = weight.reshape(kv_heads, weight.shape[0] // kv_heads, *weight.shape[1:])
    return grouped.repeat_interleave(heads // kv_heads, dim=0).reshape(-1, *weight.shape[1:])


def build_student(teacher: PreTrainedModel, name: str, init: str = "random", mixer_options: dict | None = None,
                  seed: int = 0, keep_attention=()) -> StudentForCausalLM:
    """Same depth and width as `teacher`; every attention layer replaced by mixer `name`, except the layers in
    `keep_attention` (a hybrid), which keep the teacher's attention with its q/k/v/o (norms, biases) copied
    whatever `init`, so each reproduces its teacher layer exactly; embeddings, MLPs, norms, final norm and LM
    head copied (tied weights stay tied). `student.surgery_log` lists every tensor."""
    if name not in available():
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(available())}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    check_teacher_config(teacher.config)
    keep = check_keep_attention(keep_attention, teacher.config.num_hidden_layers)
    torch.manual_seed(seed)
    config = StudentConfig(teacher_config=teacher.config.to_dict(), student=name, mixer_options=mixer_options, init=init,
                           keep_attention=keep)
    student = StudentForCausalLM(config).to(next(teacher.parameters()).dtype)
    records: list[CopyRecord] = []
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    with torch.no_grad():
        for key, tensor in teacher_state.items():
            if ".self_attn." in key:
                continue
            if key not in student_state:
                raise ValueError(f"teacher tensor {key} has no place in the student; is the teacher Llama-family?")
            _copy(student_state[key], tensor, key, key, records)
        for idx, layer in enumerate(student.model.layers):
            if idx in keep or init == "qkv_copy":
                _qkv_copy(layer.mixer, teacher.model.layers[idx].self_attn, f"model.layers.{idx}", teacher.config,
                          records, "(kept attention)" if idx in keep else "")
        copied = {r.student_key for r in records}
        for key, tensor in student.named_parameters():
            if key not in copied:
                note = "paper init (no teacher counterpart)" if init == "qkv_copy" else "random init"
                records.append(CopyRecord(None, key, tuple(tensor.shape), note))
    for record in records:
        log.info("%s", record)
    student.surgery_log = records
    return student


def _copy(target: torch.Tensor, source: torch.Tensor, teacher_key: str, student_key: str, records: list, note: str = ""):
    if target.shape != source.shape:
        raise ValueError(f"shape mismatch copying {teacher_key} {list(source.shape)} -> {student_key} {list(target.shape)}")
    target.copy_(source)
    records.append(CopyRecord(teacher_key, student_key, tuple(target.shape), note))


def _qkv_copy(mixer, attention, prefix: str, teacher_config, records: list, note: str = "") -> None:
    heads = teacher_config.num_attention_heads
    kv_heads = getattr(teacher_config, "num_key_value_heads", None) or heads
    for student_name, teacher_name in mixer.QKV_COPY.items():
        source_module, target_module = getattr(attention, teacher_name, None), getattr(mixer, student_name, None)
        if source_module is None or target_module is None:
            continue  # e.g. q_norm only exists for Qwen3 teachers
        for param_name, source in source_module.named_parameters(recurse=False):
            target = getattr(target_module, param_name, None)
            teacher_key = f"{prefix}.self_attn.{teacher_name}.{param_name}"
            student_key = f"{prefix}.mixer.{student_name}.{param_name}"
            if target is None:
                records.append(CopyRecord(teacher_key, student_key, tuple(source.shape),
                                          "NOT COPIED: the student projection has no such parameter"))
                continue
            gqa = ""
            if mixer.EXPAND_KV and teacher_name in ("k_proj", "v_proj") and kv_heads != heads:
                source, gqa = _expand_kv(source, kv_heads, heads), f"(GQA {kv_heads} -> {heads} heads)"
            _copy(target, source, teacher_key, student_key, records, " ".join(filter(None, (gqa, note))))
    for conv_name in mixer.IDENTITY_CONVS:
        conv = getattr(mixer, conv_name)
        conv.set_identity()
        records.append(CopyRecord(None, f"{prefix}.mixer.{conv_name}.weight", tuple(conv.weight.shape),
                                  "identity (pass-through) init"))
