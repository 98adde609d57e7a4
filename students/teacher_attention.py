"""A frozen teacher's softmax attention as one compiled call on CPU (`kernels.causal_attention`, native backend),
registered with transformers' AttentionInterface: the teacher's forward while a student trains runs no backward,
and torch's CPU flash kernel takes about twice the compiled call's time at the distillation batch
(`results/speed/teacher_attention_ab.txt`). A call it does not cover (a padding or custom mask, dropout,
soft-capping, a sliding window, attention sinks or biases, returned probabilities, a query shorter than its keys)
goes to transformers' sdpa function unchanged; one the compiled kernel cannot take (a gradient to record, another
device, a sequence longer than `kernels.causal_attention.native.MAX_LENGTH`) runs torch's sdpa inside
`kernels.causal_attention`."""
from __future__ import annotations

import contextlib

import torch

from kernels import native
from kernels.causal_attention import causal_attention

NAME = "distill_bench_causal"
# keyword arguments of transformers' attention calls that change the result beyond the causal softmax
_UNCOVERED = ("softcap", "sliding_window", "position_bias", "s_aux", "sinks")


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def compiled_causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                              **kwargs):
    """transformers' attention-function signature: (B, H, T, D) query, (B, G, T, D) key and value; returns the
    (B, T, H, D) output and no probabilities."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # the call's semantics; device, gradient and length are the kernel's to judge (sdpa where it cannot take them)
    covered = (attention_mask is None and not dropout and causal and query.shape[2] == key.shape[2] > 1
               and not kwargs.get("output_attentions") and all(kwargs.get(name) is None for name in _UNCOVERED))
    if not covered:
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                     **kwargs)
    scale = getattr(module, "scaling", None) if scaling is None else scaling
    return causal_attention(query, key, value, scale=scale, backend="native"), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(NAME, compiled_causal_attention)
        # sdpa's masks: none where the causal mask alone applies, a 4-d mask (so the call goes to sdpa) for padding
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def uses_compiled_attention(model: torch.nn.Module) -> bool:
    """Whether `compiled_attention` would switch this model: a CPU model on sdpa whose class takes registered
    attention functions, with the extension built."""
    config = getattr(model, "config", None)
    parameter = next(model.parameters(), None)
    return (getattr(config, "_attn_implementation", None) == "sdpa" and parameter is not None
            and parameter.device.type == "cpu" and getattr(type(model), "_supports_attention_backend", False)
            and native.module() is not None)


@contextlib.contextmanager
def compiled_attention(models: list[torch.nn.Module]):
    """Within the block, each CPU model on sdpa attention runs the compiled causal attention (forward only: for
    frozen teachers); the others, and every call it does not cover, run as before."""
    switched = [m for m in models if uses_compiled_attention(m)]
    if switched:
        _register()
    for model in switched:
        model.set_attn_implementation(NAME)
    try:
        yield
    finally:
        for model in switched:
            model.set_attn_implementation("sdpa")
