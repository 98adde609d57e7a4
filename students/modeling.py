"""Students as Hugging Face models: a teacher-family decoder whose attention layers are replaced by a mixer.

A hybrid (`keep_attention`) keeps some layers as the teacher's own softmax attention (the `attention` mixer)
and replaces the others; its cache holds a KV cache for the kept layers, recurrent states (and window buffers)
elsewhere.

The embedding, MLPs, norms and LM head are the teacher family's own modules (instantiated from the saved
teacher config), so nothing of transformers' modeling code is forked; only the residual loop is ours.
`import students` registers the config and model with AutoConfig / AutoModelForCausalLM.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from students.base import MixerConfig
from students.layers import kept_weight_stacks
from students.registry import available, build_mixer

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


KEPT_MIXER = "attention"  # what a kept layer runs: the teacher's own softmax attention


def check_keep_attention(keep, num_layers: int) -> list[int]:
    """The kept layer indices, sorted; one ValueError naming every index out of range or repeated."""
    keep = list(keep or [])
    indices, bad = [], []
    for index in keep:
        try:
            if isinstance(index, bool):
                raise TypeError
            indices.append(operator.index(index))
        except TypeError:
            bad.append(index)
    bad += [i for i in indices if not 0 <= i < num_layers]
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if bad or repeated:
        problems = ([f"not a layer index: {', '.join(map(repr, bad))}"] if bad else []) + \
                   ([f"repeated: {', '.join(map(str, repeated))}"] if repeated else [])
        raise ValueError(f"keep_attention {keep}: layer indices must be distinct ints in 0..{num_layers - 1} "
                         f"({'; '.join(problems)})")
    return sorted(indices)


class StudentConfig(PreTrainedConfig):
    """`teacher_config`: the teacher's config as a dict; `student`: registry name; `mixer_options`: per-student;
    `keep_attention`: indices of the layers that stay the teacher's softmax attention (a hybrid; [] for none)."""

    model_type = "distill_student"

    def __init__(self, teacher_config: dict | None = None, student: str = "attention",
                 mixer_options: dict | None = None, init: str = "random", keep_attention: list | None = None,
                 **kwargs):
        self.teacher_config = dict(teacher_config or {})
        self.student = student
        self.mixer_options = dict(mixer_options or {})
        self.init = init
        self.keep_attention = list(keep_attention or [])
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            if key in self.teacher_config:
                setattr(self, key, self.teacher_config[key])
        kwargs.setdefault("tie_word_embeddings", self.teacher_config.get("tie_word_embeddings", False))
        super().__init__(**kwargs)


def teacher_family_config(teacher_config: dict) -> PreTrainedConfig:
    model_type = teacher_config.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported teacher family {model_type!r}; supported Llama-family types: "
                         f"{', '.join(SUPPORTED_FAMILIES)}")
    fields = {k: v for k, v in teacher_config.items() if k not in ("model_type", "transformers_version")}
    return AutoConfig.for_model(model_type, **fields)


def mixer_config(family: PreTrainedConfig, layer_idx: int, options: dict, rotary: nn.Module | None) -> MixerConfig:
    head_dim = getattr(family, "head_dim", None) or family.hidden_size // family.num_attention_heads
    options = dict(options)
    # Qwen2 always has q/k/v biases and its config has no flag for it.
    options.setdefault("attention_bias", bool(getattr(family, "attention_bias", family.model_type == "qwen2")))
    options.setdefault("qk_norm", family.model_type == "qwen3")
    if rotary is not None:  # the teacher's own RoPE function (rope scaling variants included)
        rope_type = getattr(rotary, "rope_type", "default")
        rope_fn = ROPE_INIT_FUNCTIONS.get(rope_type) if rope_type != "default" else None
        rope_fn = rope_fn or type(rotary).compute_default_rope_parameters
        options.setdefault("rope_fn", functools.partial(rope_fn, family))
    return MixerConfig(hidden_size=family.hidden_size, num_heads=family.num_attention_heads, head_dim=head_dim,
                       num_kv_heads=family.num_key_value_heads or family.num_attention_heads, layer_idx=layer_idx,
                       num_layers=family.num_hidden_layers, norm_eps=getattr(family, "rms_norm_eps", 1e-5),
                       options=options)


class StudentCache:
    """Per-layer mixer states: recurrent states for students (constant size; with a window, plus the last W
    tokens' keys and values), a KV cache for `attention` layers (the control, or a hybrid's kept layers)."""

    is_compileable = False

    def __init__(self, num_layers: int):
        self.states: list[dict[str, Any] | None] = [None] * num_layers
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds, over the whole batch."""
        return sum(t.numel() * t.element_size() for s in self.states if s for t in s.values() if torch.is_tensor(t))

    def bytes_per_sequence(self) -> int:
        """`nbytes()` per sequence of the batch (every state tensor is batch-first); 0 for an empty cache."""
        batch = next((t.shape[0] for s in self.states if s for t in s.values() if torch.is_tensor(t) and t.dim()), 0)
        return self.nbytes() // batch if batch else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for state in self.states:
            if state:
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() > 0:
                        state[key] = value.index_select(0, beam_idx.to(value.device))


class StudentForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = StudentConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _is_stateful = True
    _supports_cache_class = False

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if config.student not in available():
            raise ValueError(f"unknown student {config.student!r}; choose one of {', '.join(available())}")
        family = teacher_family_config(config.teacher_config)
        skeleton = AutoModelForCausalLM.from_config(family)
        self.model, self.lm_head = skeleton.model, skeleton.lm_head
        rotary = getattr(self.model, "rotary_emb", None)
        if rotary is not None:
            del self.model.rotary_emb  # the mixers compute RoPE themselves, from the same function
        kept = set(check_keep_attention(config.keep_attention, family.num_hidden_layers))
        for idx, layer in enumerate(self.model.layers):
            del layer.self_attn
            if idx in kept:  # the teacher's attention: none of the student's options apply to it
                layer.mixer = build_mixer(KEPT_MIXER, mixer_config(family, idx, {}, rotary))
            else:
                layer.mixer = build_mixer(config.student, mixer_config(family, idx, config.mixer_options, rotary))
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model brings its own StudentCache

    def _init_weights(self, module):
        """Every submodule is initialised by its own constructor (the teacher family's or the paper's)."""

    @property
    def mixers(self) -> list[nn.Module]:
        """Every layer's mixer, kept attention layers included."""
        return [layer.mixer for layer in self.model.layers]

    @property
    def kept_layer_indices(self) -> list[int]:
        """The layers that stay the teacher's softmax attention (sorted)."""
        return sorted(self.config.keep_attention)

    @property
    def student_mixers(self) -> list[nn.Module]:
        """The mixers of the replaced layers: what distillation trains (kept layers are frozen by default)."""
        kept = set(self.config.keep_attention)
        return [layer.mixer for idx, layer in enumerate(self.model.layers) if idx not in kept]

    def kept_parameters(self, whole_layer: bool = False) -> dict[str, nn.Parameter]:
        """The kept attention layers' parameters by name, for training code to freeze (leave them out of the
        optimiser; they are the teacher's own). `whole_layer`: also those layers' MLPs and norms."""
        prefixes = tuple(f"model.layers.{idx}.{'' if whole_layer else 'mixer.'}" for idx in self.config.keep_attention)
        return {name: p for name, p in self.named_parameters() if name.startswith(prefixes)}

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def final_hidden(self, input_ids: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """What the LM head reads (after the final norm), without forming logits (the fused losses' input)."""
        x = self.model.embed_tokens(input_ids)
        for idx in range(len(self.model.layers)):
            x, _ = self.layer_forward(idx, x, backend=backend)
        return self.model.norm(x)

    def layer_forward(self, idx: int, x: torch.Tensor, state: dict | None = None, backend: str = "auto"):
        """One pre-norm residual block with the mixer in place of attention: (hidden in) -> (hidden out, state)."""
        layer = self.model.layers[idx]
        mixed, state = layer.mixer(layer.input_layernorm(x), state, backend=backend)
        x = x + mixed
        return x + layer.mlp(layer.post_attention_layernorm(x)), state

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, use_cache=None,
                output_hidden_states=None, return_dict=True, backend: str = "auto",
                logits_to_keep: int | torch.Tensor = 0, **kwargs):
        """transformers' causal-LM forward. `logits_to_keep` as there: an int N forms the last N positions' logits
        (0: all), a 1-D tensor those positions' (a score reading a few positions skips the LM head elsewhere)."""
        cache = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported: the recurrent students read every token; "
                             "pass sequences of equal length (no padding) or batch size 1")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = StudentCache(len(self.model.layers))
        if cache is not None and x.shape[1] == 1:
            backend = "step"  # one token: the O(1) recurrent step (the kernels' fewest-ops form)
        hidden_states = [x] if output_hidden_states else None
        for idx in range(len(self.model.layers)):
            x, state = self.layer_forward(idx, x, cache.states[idx] if cache is not None else None, backend)
            if cache is not None:
                cache.states[idx] = state
            if output_hidden_states:
                hidden_states.append(x)
        if cache is not None:
            cache.seen_tokens += x.shape[1]
        x = self.model.norm(x)
        if output_hidden_states:
            hidden_states[-1] = x  # as in transformers: the last entry is after the final norm
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[:, logits_to_keep]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            if logits.shape[1] != labels.shape[1]:
                raise ValueError("labels need every position's logits; leave logits_to_keep at 0")
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=tuple(hidden_states) if hidden_states else None,
                                      **{_CACHE_FIELD: cache})

    def generate(self, *args, **kwargs):
        """GenerationMixin.generate, keeping the weights stacked for one product between decoded tokens
        (`students.layers.kept_weight_stacks`)."""
        with kept_weight_stacks():
            return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, use_cache=True, **kwargs):
        cache = kwargs.get("cache") or kwargs.get("past_key_values")
        if cache is not None and cache.seen_tokens > 0:
            input_ids = input_ids[:, cache.seen_tokens:]
            inputs_embeds = None
        model_inputs = {"input_ids": input_ids if inputs_embeds is None else None, "inputs_embeds": inputs_embeds,
                        "attention_mask": attention_mask, "use_cache": use_cache, _CACHE_FIELD: cache}
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, num_new_tokens)
        model_kwargs[_CACHE_FIELD] = getattr(outputs, _CACHE_FIELD)
        return model_kwargs


AutoConfig.register(StudentConfig.model_type, StudentConfig, exist_ok=True)
AutoModelForCausalLM.register(StudentConfig, StudentForCausalLM, exist_ok=True)
