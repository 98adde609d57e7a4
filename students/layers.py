"""Building blocks shared by the mixers: short causal convolution with a cache, rotary, norms."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import native
from kernels.head_norm import head_norm
from kernels.rotary import rotary


class ShortConv(nn.Module):
    """Depthwise causal conv1d over time (Mamba-2 / GDN / MetaLA short convolution), stepping with a cache.

    The cache holds the last `kernel_size − 1` inputs, so a token-by-token run equals the full convolution.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True, activation: str | None = "silu"):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv1d's default init

    def set_identity(self) -> None:
        """Pass the current token through unchanged (a conv that costs the copied projections nothing)."""
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, 0, -1] = 1.0
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C); cache: (B, kernel_size − 1, C) or None. Returns (y, new cache)."""
        return short_conv(x, self.weight[:, 0], self.bias, self.activation == "silu", cache)


@contextlib.contextmanager
def kept_weight_stacks():
    """Within this scope, with gradients off, weights stacked for one product are built once and reused
    (`StudentForCausalLM.generate` decodes inside it): stacking per call would copy as many bytes as a decoded
    token's product reads, so outside it one token runs separate products. As with
    `torch.nn.utils.parametrize.cached`, weights must not change inside the scope; a weight updated in place
    (its version counter) or replaced (`.to`, `.data =`) is still noticed, but torch's fused optimisers update
    weights without bumping their version counters, and weights made in inference mode have none. The stacks are
    dropped when the outermost scope exits."""
    global _KEPT_STACKS
    outermost = _KEPT_STACKS is None
    if outermost:
        _KEPT_STACKS = {}
    try:
        yield
    finally:
        if outermost:
            _KEPT_STACKS = None


_KEPT_STACKS: dict | None = None


def _keeping_stacks() -> bool:
    return _KEPT_STACKS is not None and not torch.is_grad_enabled()


def stacked_weight(linears: list[nn.Module], batched: bool = False) -> torch.Tensor:
    """The linears' weights stacked for one product: (Σ out, in), or with `batched` (n, in, out) for torch.bmm
    (any modules with a `weight` stack the same way: ShortConvs give (Σ channels, 1, k), one convolution's weight).
    Built in the graph each call (each weight gets its gradient), or kept inside `kept_weight_stacks`."""
    weights = [_weight(linear) for linear in linears]
    stack = (lambda ws: torch.stack(ws).transpose(1, 2)) if batched else torch.cat
    if not _keeping_stacks():
        return stack(weights)
    key = (batched, *map(id, linears))
    hit = _KEPT_STACKS.get(key)
    # The kept entry holds the tensors it was built from, so while it lives no other tensor can take their memory:
    # a replaced weight (`.to`, `.data =`) has a new address, one updated in place a new version. Weights made in
    # inference mode have no version counter: they are followed by address only (one changed in place inside
    # inference mode goes unnoticed, as with fused optimisers), not stacked afresh for every token.
    fingerprint = tuple((w.data_ptr(), None if w.is_inference() else w._version) for w in weights)
    if hit is None or hit[1] != fingerprint:
        hit = _KEPT_STACKS[key] = (tuple(w.detach() for w in weights), fingerprint, stack(weights))
    return hit[2]


def _weight(module: nn.Module) -> torch.Tensor:
    """module.weight, read from the registered parameters where it is one (a decoded token reads it for every
    projection: nn.Module's attribute lookup costs a microsecond or so a read)."""
    weight = module._parameters.get("weight")
    return module.weight if weight is None else weight


def stacked_linear(x: torch.Tensor, linears: list[nn.Linear]) -> torch.Tensor:
    """torch.cat([linear(x) for linear in linears], -1) for bias-free projections of one input, as one product
    with their weights stacked (no concatenation of activations); for one token outside `kept_weight_stacks`
    the separate products (stacking the weights each call would copy more than it saves)."""
    if x.shape[1] == 1 and not _keeping_stacks():
        return torch.cat([linear(x) for linear in linears], dim=-1)
    return F.linear(x, stacked_weight(linears))


def batched_linear(xs: torch.Tensor, linears: list[nn.Linear]) -> torch.Tensor:
    """torch.stack([linear(x) for x, linear in zip(xs, linears)]) for bias-free projections of n inputs
    xs (n, B, T, in) with one output width, as one batched product (n, B, T, out); for one token outside
    `kept_weight_stacks` the separate products."""
    n, B, T, D = xs.shape
    if T == 1 and not _keeping_stacks():
        return torch.stack([linear(x) for x, linear in zip(xs, linears)])
    return torch.bmm(xs.reshape(n, B * T, D), stacked_weight(linears, batched=True)).view(n, B, T, -1)


def _last_inputs(x: torch.Tensor, cache: torch.Tensor | None, k: int) -> torch.Tensor:
    """The next cache: the k − 1 inputs up to the last of x (from `cache`, or zeros, where x is shorter), a copy."""
    B, T, C = x.shape
    if T >= k - 1:
        return x[:, T - (k - 1):].clone()  # not a view of x
    before = x.new_zeros(B, k - 1, C) if cache is None else cache.to(x.dtype)
    return torch.cat([before, x], dim=1)[:, T:]


def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
               cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`ShortConv`'s function: x (B, T, C), weight (C, k), bias (C,) or None, cache (B, k − 1, C) or None.
    Several ShortConvs over adjacent channels run as one call on their concatenated weights."""
    B, T, C = x.shape
    k = weight.shape[1]
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    compiled = _compiled_short_conv(x, weight, bias, silu, cache)
    if compiled is not None:
        return compiled
    if cache is None and T > 1:  # zero history: the taps read shifted slices of x, no padded copy of it
        return _ShiftedConv.apply(x, weight, bias, silu, True), _last_inputs(x, None, k)
    if cache is None:
        cache = x.new_zeros(B, k - 1, C)
    padded = torch.cat([cache.to(x.dtype), x], dim=1)
    new_cache = padded[:, padded.shape[1] - (k - 1):]
    if T == 1:  # a decode step: one weighted sum over the k cached inputs, a third of the general path's time
        y = (padded * weight.t()).sum(1, keepdim=True)
        y = y if bias is None else y + bias
        return (F.silu(y) if silu else y), new_cache
    return _ShiftedConv.apply(padded, weight, bias, silu, False), new_cache.clone()


def _compiled_short_conv(x, weight, bias, silu, cache, normalized=0, group=0):
    """A prompt or a decoded token in fp32 on CPU without a gradient to record as one compiled pass (kernels/native),
    the first `normalized` outputs L2-normalised in groups of `group`: (y, the next cache); else None."""
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    compiled = native.without_autograd(x, weight, bias, cache) if x.dtype == torch.float32 else None
    if compiled is None:
        return None
    return tuple(compiled.short_conv(x, weight, bias, silu, cache, normalized, group))  # (y, the next cache)


def short_conv_normalized(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
                          cache: torch.Tensor | None, channels: int, group: int):
    """`short_conv`, then its first `channels` outputs L2-normalised in fp32 in groups of `group` (gated_deltanet's
    q and k heads). Returns (the groups (B, T, channels // group, group) fp32, the other channels, the next cache).
    In the compiled pass each row is normalised while in cache, instead of three more passes over the output."""
    compiled = _compiled_short_conv(x, weight, bias, silu, cache, channels, group)
    if compiled is not None:
        y, cache = compiled
        groups = y[..., :channels].unflatten(-1, (channels // group, group))
    else:
        y, cache = short_conv(x, weight, bias, silu, cache)
        groups = F.normalize(y[..., :channels].unflatten(-1, (channels // group, group)).float(), dim=-1)
    return groups, y[..., channels:], cache


class _ShiftedConv(torch.autograd.Function):
    """y = act(b + Σ_j w_j ⊙ padded[:, j:j+T]) with hand-written backward: F.conv1d's depthwise backward is many
    times slower on CPU (bf16 above all), and autograd through the shifted multiply-adds spends its time on
    zero-filled slice gradients. With `zero_history` the input is x itself and the k − 1 rows before it are
    zeros: tap j then reads x shifted by k − 1 − j, and no padded copy is made. `conv1d_reference` is the same
    function through F.conv1d."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, silu: bool, zero_history: bool):
        taps = weight.t().contiguous()  # (k, C): a strided per-channel factor makes each multiply ~10× slower
        k = taps.shape[0]
        T = inputs.shape[1] - (0 if zero_history else k - 1)
        first = k - 1 if zero_history else 0  # the tap that reads inputs[:, :T] whole
        y = inputs[:, :T] * taps[first] if bias is None else torch.addcmul(bias, inputs[:, :T], taps[first])
        for j, (out, src) in _ShiftedConv.shifts(k, T, zero_history):
            y[:, out].addcmul_(inputs[:, src], taps[j])
        ctx.silu, ctx.has_bias, ctx.zero_history = silu, bias is not None, zero_history
        ctx.save_for_backward(inputs, taps, y if silu else None)
        return F.silu(y) if silu else y

    @staticmethod
    def shifts(k: int, T: int, zero_history: bool):
        """(tap, (output rows, input rows)) of every tap but the first one `forward` applies whole."""
        if not zero_history:
            return [(j, (slice(None), slice(j, j + T))) for j in range(1, k)]
        return [(j, (slice(k - 1 - j, None), slice(0, T - (k - 1 - j)))) for j in range(k - 1) if k - 1 - j < T]

    @staticmethod
    def backward(ctx, grad):
        inputs, taps, pre_activation = ctx.saved_tensors
        if ctx.silu:
            grad = torch.ops.aten.silu_backward(grad, pre_activation)
        k, T = taps.shape[0], grad.shape[1]
        first = k - 1 if ctx.zero_history else 0
        shifted = _ShiftedConv.shifts(k, T, ctx.zero_history)
        grad_inputs = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_inputs = grad * taps[first] if ctx.zero_history else inputs.new_zeros(inputs.shape)
            if not ctx.zero_history:
                grad_inputs[:, :T].addcmul_(grad, taps[first])
            for j, (out, src) in shifted:
                grad_inputs[:, src].addcmul_(grad[:, out], taps[j])
        if ctx.needs_input_grad[1]:
            grad_weight = inputs.new_zeros(taps.shape)  # (k, C); a tap that reads only zeros keeps 0
            grad_weight[first] = (grad * inputs[:, :T]).sum((0, 1))
            for j, (out, src) in shifted:
                grad_weight[j] = (grad[:, out] * inputs[:, src]).sum((0, 1))
            grad_weight = grad_weight.t()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1))
        return grad_inputs, grad_weight, grad_bias, None, None


def conv1d_reference(conv: ShortConv, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(x, cache)[0]` through F.conv1d (the definition the shifted form must equal)."""
    B, T, C = x.shape
    cache = x.new_zeros(B, conv.kernel_size - 1, C) if cache is None else cache
    padded = torch.cat([cache.to(x.dtype), x], dim=1)
    y = F.conv1d(padded.transpose(1, 2), conv.weight, conv.bias, groups=C).transpose(1, 2)
    return F.silu(y) if conv.activation == "silu" else y


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Default RoPE frequencies (Su et al. 2021), as Llama computes them."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


class Rotary:
    """RoPE frequencies, computed on first use (never during meta-device model construction).

    `rope_fn` returns (inv_freq, attention_scaling); surgery passes the teacher family's own rope
    function, so rope-scaling variants match the teacher; the default is plain RoPE with `theta`.
    The cos/sin of the latest positions are kept, shared by every `Rotary` with the same frequencies: q and k,
    and every layer of one forward pass, reuse them (a decode step computes them once, not twice per layer).
    """

    _latest: dict = {}  # (inv_freq bytes, scaling) -> ((offset, length, device, inference mode), cos, sin)

    def __init__(self, head_dim: int, theta: float = 10000.0, rope_fn=None):
        self.rope_fn = rope_fn or (lambda: (rope_inv_freq(head_dim, theta), 1.0))
        self._cache = None

    def __call__(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        if self._cache is None:
            with torch.device("cpu"):
                inv_freq, scaling = self.rope_fn()
            inv_freq, scaling = inv_freq.detach().float().cpu(), float(scaling)
            self._cache = (inv_freq, scaling, (inv_freq.numpy().tobytes(), scaling))
        inv_freq, scaling, key = self._cache
        # inference tensors cannot be saved for backward: angles made under inference_mode serve only there
        where = (offset, x.shape[1], x.device, torch.is_inference_mode_enabled())
        latest = Rotary._latest.get(key)
        if latest is None or latest[0] != where:
            latest = Rotary._latest[key] = (where, *rotary_angles(inv_freq, offset, x.shape[1], x.device, scaling))
        return rotary(x, latest[1], latest[2])


def rotary_angles(inv_freq: torch.Tensor, offset: int, length: int, device, attention_scaling: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (1, T, 1, D) of positions offset … offset+T−1, times the rope variant's attention scaling."""
    positions = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.to(device, torch.float32)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * attention_scaling)[None, :, None, :], (emb.sin() * attention_scaling)[None, :, None, :]


def apply_rotary(x: torch.Tensor, inv_freq: torch.Tensor, offset: int, attention_scaling: float = 1.0) -> torch.Tensor:
    """Rotate (B, T, H, D) by positions offset … offset+T−1 (Llama's rotate_half convention)."""
    return rotary(x, *rotary_angles(inv_freq, offset, x.shape[1], x.device, attention_scaling))


class HeadRMSNorm(nn.Module):
    """RMSNorm over each head's channels, optionally gated by silu(z) (Mamba-2's RMSNormGated, GLA, GDN)."""

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return head_norm(x, self.weight, None, gate, kind="rms", activation="silu", eps=self.eps)


class HeadLayerNorm(nn.Module):
    """LayerNorm over each head's channels (RetNet / RWKV GroupNorm, xLSTM multi-head LayerNorm)."""

    def __init__(self, head_dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(head_dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None, activation: str = "none",
                augment: tuple | None = None) -> torch.Tensor:
        """fp32 statistics and affine whatever the model's dtype (bf16 weights too); times activation(gate) if given;
        `augment`: MetaLA's self-augmentation added before the norm (`kernels.head_norm`)."""
        norm = self.norm
        return head_norm(x, norm.weight, norm.bias, gate, kind="layer", activation=activation, eps=norm.eps,
                         augment=augment)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, H·D) -> (B, T, H, D)."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H, D) -> (B, T, H·D)."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
