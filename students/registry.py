"""The student registry: name -> mixer class. Adding a student is one file plus one line here."""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from students.base import Mixer, MixerConfig

STUDENTS: dict[str, str] = {
    "mamba": "students.mixers.mamba:Mamba2Mixer",
    "linear_attention": "students.mixers.linear_attention:LinearAttentionMixer",
    "rwkv": "students.mixers.rwkv:RWKV6Mixer",
    "retnet": "students.mixers.retnet:RetNetMixer",
    "gla": "students.mixers.gla:GLAMixer",
    "xlstm": "students.mixers.xlstm:MLSTMMixer",
    "metala": "students.mixers.metala:MetaLAMixer",
    "gated_deltanet": "students.mixers.gated_deltanet:GatedDeltaNetMixer",
    "attention": "students.mixers.attention:AttentionMixer",  # the control: the teacher's own attention
}


def available() -> list[str]:
    """Registered student names (the softmax control `attention` last)."""
    return list(STUDENTS)


def mixer_class(name: str) -> type[Mixer]:
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(available())}")
    module, cls = STUDENTS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _accepts(allowed, value) -> bool:
    if isinstance(allowed, tuple):  # the values it takes
        return any(value == v and type(value) is type(v) for v in allowed)  # 1 is not True
    return value in allowed  # a rule such as IntOption


def _describe(allowed) -> str:
    return "|".join(map(str, allowed)) if isinstance(allowed, tuple) else str(allowed)


def check_options(name: str, options: dict) -> None:
    """One clear ValueError for an option the student does not take, or a value it does not accept."""
    allowed = mixer_class(name).OPTIONS
    for key, value in options.items():
        if key not in allowed:
            takes = ", ".join(f"{k} ({_describe(v)})" for k, v in allowed.items()) or "none"
            raise ValueError(f"student {name} has no option {key!r}; it takes: {takes}")
        if not _accepts(allowed[key], value):
            one_of = "one of " if isinstance(allowed[key], tuple) else ""
            raise ValueError(f"student {name}: option {key}={value!r} is not {one_of}{_describe(allowed[key])}")


def build_mixer(name: str, config: MixerConfig) -> Mixer:
    """Instantiate the named mixer for the given shapes.

    With `attention_bias` (Qwen2-style teachers), the projections that receive the teacher's q/k/v get a
    bias too, so `qkv_copy` carries the biases over; a zero bias leaves the paper's mixer unchanged.
    """
    mixer = mixer_class(name)(config)
    if config.options.get("attention_bias"):
        for student_name, teacher_name in mixer.QKV_COPY.items():
            module = getattr(mixer, student_name, None)
            if teacher_name in ("q_proj", "k_proj", "v_proj") and isinstance(module, nn.Linear) and module.bias is None:
                module.bias = nn.Parameter(torch.zeros(module.out_features))
    return mixer
