"""The mixer contract every student follows, and the template shared by the recurrent students.

A mixer maps hidden states (B, T, D) to (B, T, D). Every mixer offers four views of the same function:
  forward(x, state, backend="auto")  the chunked parallel form (training path),
  forward(x, state, backend="naive") the fp32 loop, short enough to check against the paper (reference),
  step(x_t, state)                   one token, O(1) state (generation path: backend="step"),
  mixer_matrix(x)                    M (B, H, T, T) with core output = M @ v (matrix mixing, analysis).
Every recurrent student also takes the option `window=W`: exact softmax attention over the last W tokens beside
the recurrence, which then covers only the older tokens (LoLCATs eq. 7; `students.window`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from kernels import delta_rule, delta_rule_matrix, linear_recurrence, linear_recurrence_matrix
from kernels.linear_recurrence.ssd_terms import scaled_keys, with_skip
from students.layers import Rotary
from students.window import band_matrix, band_softmax, band_softmax_naive, sliding_sum, sliding_sum_naive

State = dict[str, Any]

# A long prompt without gradient runs through a recurrent mixer this many tokens at a time on CPU, its state carried
# from block to block (the same outputs, token for token): a block's features stay in cache between the mixer's
# passes, where a 16k-token prompt's would go to memory and back (results/speed/prefill_blocks.md).
PREFILL_BLOCK = 2048


@dataclass(frozen=True)
class IntOption:
    """An option that takes any int ≥ `minimum` (in `Mixer.OPTIONS`, where the others list their values)."""

    minimum: int = 0

    def __contains__(self, value) -> bool:
        return type(value) is int and value >= self.minimum  # True is not 1

    def __str__(self) -> str:
        return f"an int >= {self.minimum}"


@dataclass
class MixerConfig:
    """Shapes taken from the teacher, plus student-specific options."""

    hidden_size: int
    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    layer_idx: int = 0
    num_layers: int = 1
    rope_theta: float = 10000.0
    conv_size: int = 4
    norm_eps: float = 1e-5
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.num_kv_heads = self.num_kv_heads or self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")


class Mixer(nn.Module):
    """Base class. Subclasses set `name` and implement forward / mixer_matrix / core."""

    name = "mixer"
    QKV_COPY: dict[str, str] = {}  # student submodule -> teacher attention submodule, for init="qkv_copy"
    IDENTITY_CONVS: tuple[str, ...] = ()
    EXPAND_KV = True  # expand grouped-query k/v heads to one per query head
    # Options a user may set (`--mixer-option KEY=VALUE`): name -> the values it takes. Options the surgery sets
    # from the teacher (rope_fn, qk_norm, attention_bias) are not listed: they are not the user's to choose.
    OPTIONS: dict[str, tuple | IntOption] = {}

    def __init__(self, config: MixerConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim

    def forward(self, x: torch.Tensor, state: State | None = None, backend: str = "auto"
                ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def core(self, x: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """(core output, values), both (B, T, H, V), with core output = mixer_matrix(x) @ values."""
        raise NotImplementedError

    def mixer_matrix(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    supports_matrix_terms = False  # `matrix_terms` gives the pieces of `mixer_matrix` (fused stage-1 loss)

    def matrix_terms(self, x: torch.Tensor) -> dict[str, Any] | None:
        """The arguments of `kernels.mixer_matrix_loss` that describe `mixer_matrix(x)`, or None."""
        return None

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's recurrence as an fp32 loop over time."""
        return self.forward(x, backend="naive")[0]

    def step(self, x_t: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """One token: x_t (B, D) -> (y_t (B, D), new state)."""
        y, state = self.forward(x_t[:, None], state, backend="step")
        return y[:, 0], state

    def state_size(self, seq_len: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of generation state per sequence after `seq_len` tokens, in `dtype`: measured on the state a
        real forward pass over `seq_len` tokens leaves (a recurrent state stays put, a KV cache grows)."""
        param = next(self.parameters())
        x = torch.zeros(1, max(1, seq_len), self.hidden_size, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            _, state = self.forward(x, None)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        return sum(t.numel() * itemsize for t in state.values() if torch.is_tensor(t) and t.is_floating_point())


@dataclass
class Features:
    """What a recurrent mixer feeds its kernel, plus what its read-out and next step need."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    log_decay: torch.Tensor | None = None
    beta: torch.Tensor | None = None  # delta rule only
    bonus: torch.Tensor | None = None  # RWKV-6 only
    # Mamba-2's Δ_t and D (Dao & Gu 2024, §7): the recurrence writes key_scale_t k_t in k_t's place (B, T, H), and
    # the core output adds skip ⊙ v_t (H,); the kernel applies both in its own pass where it can
    key_scale: torch.Tensor | None = None
    skip: torch.Tensor | None = None
    scale: float | None = None
    value_dim: int | None = None  # v may carry extra columns (e.g. ones for a normaliser)
    context: dict[str, Any] = field(default_factory=dict)  # gates etc. for the read-out
    carry: dict[str, Any] = field(default_factory=dict)  # conv caches, token shift: part of the next state
    # What the sliding window (option `window`) scores with: the query/key projections that qkv_copy fills from
    # W_Q/W_K, before feature maps, gates and convolutions (LoLCATs keeps the teacher's q/k for its window);
    # None: q and k.
    window_q: torch.Tensor | None = None
    window_k: torch.Tensor | None = None

    @property
    def values(self) -> torch.Tensor:
        return self.v if self.value_dim is None else self.v[..., :self.value_dim]

    def with_scaled_keys(self) -> Features:
        """These features with k_t times key_scale_t written out (and no key_scale): for the forms that read keys
        other than the kernel's (the window, the materialised matrix)."""
        if self.key_scale is None:
            return self
        return dataclasses.replace(self, k=scaled_keys(self.k, self.key_scale), key_scale=None)

    @property
    def has_normaliser(self) -> bool:
        """v carries one column of ones after the values: the mixer divides by that column (its normaliser)."""
        return self.value_dim is not None and self.v.shape[-1] == self.value_dim + 1


class RecurrentMixer(Mixer):
    """Template for the students built on `linear_recurrence` or `delta_rule`.

    A subclass writes `featurize` (projections, convolutions, gates -> Features) and `readout`
    (norm, output gate, output projection); the kernel call, state handling, the step and the
    materialised matrix come from here, with or without the sliding window (option `window`, below).

    Option window=W (int; 0 or absent: off): exact softmax attention over the last W tokens, combined with the
    recurrence over the tokens before them as in LoLCATs eq. 7 (the definition: `students.window`). The
    recurrence runs on keys, values, gates and decays delayed by W tokens (its state lags W tokens behind),
    with each query decayed over its window. State: the lagging recurrent state, the last W tokens' kernel
    inputs (`lag_*`), the last W−1 window keys (`window_k`) and the position: it grows with W, never with T.
    """

    uses_delta_rule = False
    # init="qkv_copy": which teacher attention projection initialises which of ours (k/v expanded from GQA).
    # Mixers whose projections play other roles rename them here (Mamba: C <- W_Q, B <- W_K, x <- W_V).
    QKV_COPY = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}
    OPTIONS = {"window": IntOption(0)}  # subclasses with options of their own add to this dict
    WINDOW_ROPE = True  # the window rotates its q/k with the teacher's RoPE (False: featurize already did)
    LAGGED_CONTEXT: tuple[str, ...] = ()  # context entries that `recurrence` reads per token (delayed with k)

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        self.window = config.options.get("window", 0)
        if self.window not in IntOption(0):
            raise ValueError(f"{self.name}: window must be an int >= 0 (0: no window), got {self.window!r}")
        if self.window and self.WINDOW_ROPE:
            self.window_rotary = Rotary(config.head_dim, config.rope_theta, config.options.get("rope_fn"))

    def add_attention_projections(self) -> None:
        """The teacher-shaped projections `QKV_COPY` names, without bias: D → H·K where the teacher's is a
        query, key or value projection, H·K → D for its output projection, so qkv_copy copies them as they are."""
        D, HK = self.hidden_size, self.num_heads * self.head_dim
        for ours, theirs in self.QKV_COPY.items():
            setattr(self, ours, nn.Linear(*((HK, D) if theirs == "o_proj" else (D, HK)), bias=False))

    def featurize(self, x: torch.Tensor, state: State) -> Features:
        raise NotImplementedError

    def readout(self, core: torch.Tensor, features: Features, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish_core(self, o: torch.Tensor, features: Features) -> torch.Tensor:
        """Kernel output -> core output (normalisers, skip terms). Must stay linear in the values."""
        return o

    def finish_matrix(self, matrix: torch.Tensor, features: Features) -> torch.Tensor:
        """Apply `finish_core`'s effect to the kernel's matrix."""
        return matrix

    def recurrence(self, f: Features, backend: str, state: State) -> tuple[torch.Tensor, State]:
        """(kernel output, the recurrence's part of the next state) from the features and the current state."""
        if self.uses_delta_rule:
            keys = scaled_keys(f.k, f.key_scale)
            o, final = delta_rule(f.q, keys, f.v, f.beta, f.log_decay, scale=f.scale, initial_state=state.get("kernel"),
                                  output_final_state=True, backend=backend)
            o = with_skip(o, f.v, f.skip)
        else:
            o, final = linear_recurrence(f.q, f.k, f.v, f.log_decay, f.bonus, scale=f.scale,
                                         initial_state=state.get("kernel"), output_final_state=True, backend=backend,
                                         key_scale=f.key_scale, skip=f.skip)
        return o, {"kernel": final}

    def mix(self, f: Features, backend: str, state: State) -> tuple[torch.Tensor, State]:
        """What `finish_core` reads and the mixing part of the next state: the recurrence's output, or with a
        window o_t = r_t + [N_t, Z_t] (a normaliser shared, LoLCATs eq. 7) or r_t + N_t / Z_t (none); plus
        skip ⊙ v_t where the features carry a skip term."""
        if not self.window:
            return self.recurrence(f, backend, state)
        naive = backend == "naive"
        lagged, lag_state = self.lagged_features(f, state, naive)
        r, kernel_state = self.recurrence(lagged, backend, state)
        numerator, normaliser, window_state = self.window_attention(f, state, naive)
        if f.has_normaliser:
            o = r.float() + torch.cat([numerator, normaliser[..., None]], dim=-1)
        else:
            o = r.float() + numerator / normaliser[..., None]
        return with_skip(o, f.v, f.skip), {**kernel_state, **lag_state, **window_state}

    def lagged_features(self, f: Features, state: State, naive: bool = False) -> tuple[Features, State]:
        """The recurrence's inputs with a window: keys, values, β, decays (and `LAGGED_CONTEXT`) delayed by W
        tokens, so the state it reaches at t is S_{t−W}; queries times exp(Σ_{r=t−W+1}^{t} log α_r) (to t−1
        for the RWKV-6 form), so that key s ≤ t−W still decays over all of (s, t]. The W tokens before the
        first come from the state, or are zeros, which write nothing and do not decay (log α = 0)."""
        W, T = self.window, f.q.shape[1]
        f = f.with_scaled_keys()  # keys delayed as the recurrence reads them
        current = {"k": f.k, "v": f.v, "log_decay": f.log_decay, "beta": f.beta,
                   **{name: f.context[name] for name in self.LAGGED_CONTEXT}}
        delayed, lag_state, decays = {}, {}, None
        for name, tensor in current.items():
            if tensor is None:
                continue
            past = state.get(f"lag_{name}")
            if past is None:
                past = tensor.new_zeros(tensor.shape[0], W, *tensor.shape[2:])
            sequence = torch.cat([past.to(tensor.dtype), tensor], dim=1)  # index i is token i − W
            delayed[name] = sequence[:, :T]
            lag_state[f"lag_{name}"] = sequence[:, T:].clone()  # not a view: the cache keeps W tokens, not W + T
            if name == "log_decay":
                decays = sequence
        q = f.q
        if decays is not None:
            n = W - (1 if f.bonus is not None else 0)  # RWKV-6 reads S_{t−1}: its query is not decayed by α_t
            window_sums = (sliding_sum_naive if naive else sliding_sum)(decays.float(), n)[:, n:n + T]
            factor = window_sums.exp()
            # In q's own dtype, so the kernel sees the inputs it sees without a window (bf16 keeps fp32's range).
            q = (f.q.float() * (factor[..., None] if factor.dim() == 3 else factor)).to(f.q.dtype)
        lagged = dataclasses.replace(f, q=q, k=delayed["k"], v=delayed["v"], log_decay=delayed.get("log_decay"),
                                     beta=delayed.get("beta"), bonus=None, skip=None,
                                     context={**f.context, **{n: delayed[n] for n in self.LAGGED_CONTEXT}})
        return lagged, lag_state

    def window_qk(self, f: Features, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's query and key for tokens from `position` on, rotated (RoPE) by their positions."""
        q = f.q if f.window_q is None else f.window_q
        k = scaled_keys(f.k, f.key_scale) if f.window_k is None else f.window_k
        if self.WINDOW_ROPE:
            q, k = self.window_rotary(q, position), self.window_rotary(k, position)
        return q, k

    def window_attention(self, f: Features, state: State, naive: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """(N_t, Z_t, state part): the window's numerator and normaliser over keys [t−W+1, t] (fp32). The
        previous W−1 keys come from the state, their values from the lagged values `lag_v` (no second copy)."""
        W, T = self.window, f.q.shape[1]
        position = state.get("window_position", 0)
        q, k = self.window_qk(f, position)
        values = f.values
        B, _, H, K = k.shape
        past_k = state.get("window_k")
        past_k = k.new_zeros(B, W - 1, H, K) if past_k is None else past_k.to(k.dtype)
        lag_v = state.get("lag_v")
        past_v = (values.new_zeros(B, W - 1, H, values.shape[-1]) if lag_v is None
                  else lag_v[:, 1:, :, :values.shape[-1]].to(values.dtype))
        keys, values = torch.cat([past_k, k], dim=1), torch.cat([past_v, values], dim=1)
        first_valid = max(0, W - 1 - position)  # before the first token there are no keys
        numerator, normaliser = (band_softmax_naive if naive else band_softmax)(q, keys, values, W, first_valid)
        return numerator, normaliser, {"window_k": keys[:, T:].clone(), "window_position": position + T}

    def forward(self, x, state=None, backend="auto"):
        if (x.shape[1] > PREFILL_BLOCK and backend == "auto" and x.device.type == "cpu"
                and not torch.is_grad_enabled()):
            return self.forward_in_blocks(x, state, backend)
        state = state or {}
        f = self.featurize(x, state)
        o, mixed_state = self.mix(f, backend, state)
        y = self.readout(self.finish_core(o, f), f, x)
        return y.to(x.dtype), {**f.carry, **mixed_state}

    def forward_in_blocks(self, x, state=None, backend="auto", block: int | None = None):
        """`forward` over x `block` tokens (default `PREFILL_BLOCK`) at a time, each block starting from the state
        the one before left: a recurrent mixer's prompt may be split anywhere (as decoding splits it per token)."""
        block = block or PREFILL_BLOCK
        outputs = []
        for start in range(0, x.shape[1], block):
            y, state = self.forward(x[:, start:start + block], state, backend)
            outputs.append(y)
        return torch.cat(outputs, dim=1), state

    def core(self, x, backend="auto"):
        f = self.featurize(x, {})
        o, _ = self.mix(f, backend, {})
        return self.finish_core(o, f), f.values

    def mixer_matrix(self, x):
        """M with core = M @ values. With a window: finish_matrix(E + R), E the window's e_ts (or e_ts / Z_t
        without a normaliser) in the band t−W < s ≤ t, R[t, s] the lagged recurrence's weight of key s ≤ t−W."""
        f = self.featurize(x, {}).with_scaled_keys()
        if not self.window:
            return self.finish_matrix(self._with_skip_diagonal(self._kernel_matrix(f), f), f)
        W, T = self.window, x.shape[1]
        lagged, _ = self.lagged_features(f, {})
        delayed = self._kernel_matrix(lagged)  # columns are delayed tokens: column u is token u − W
        lagged_part = torch.zeros_like(delayed)
        lagged_part[..., :, :max(T - W, 0)] = delayed[..., :, W:]
        q, k = self.window_qk(f, 0)
        matrix = lagged_part + band_matrix(q, k, W, normalise=not f.has_normaliser)
        return self.finish_matrix(self._with_skip_diagonal(matrix, f), f)

    @staticmethod
    def _with_skip_diagonal(matrix: torch.Tensor, f: Features) -> torch.Tensor:
        """The matrix plus diag(skip) per head: the skip term, skip ⊙ v_t, as a mixing weight."""
        if f.skip is None:
            return matrix
        return matrix + f.skip.float()[:, None, None] * torch.eye(matrix.shape[-1], device=matrix.device)

    def _kernel_matrix(self, f: Features) -> torch.Tensor:
        if self.uses_delta_rule:
            return delta_rule_matrix(f.q, f.k, f.beta, f.log_decay, scale=f.scale)
        return linear_recurrence_matrix(f.q, f.k, f.log_decay, f.bonus, scale=f.scale)

    @property
    def supports_matrix_terms(self) -> bool:
        return not self.window  # the window's max-shifted softmax has no such terms

    def matrix_terms(self, x):
        """M = row_scale · (scale · Σ_c q_tc k_sc exp(decay sums) + diag(diagonal)) as kernel inputs, without
        forming M; `finish_terms` adds a mixer's normaliser or skip term (its `finish_matrix`). For the delta
        rule the terms carry beta (its matrix is `delta_rule_matrix`)."""
        if not self.supports_matrix_terms:
            return None
        f = self.featurize(x, {}).with_scaled_keys()
        diagonal = None if f.skip is None else f.skip.float()
        terms = dict(q=f.q, k=f.k, log_decay=f.log_decay, bonus=f.bonus, scale=f.scale, row_scale=None,
                     diagonal=diagonal)
        if self.uses_delta_rule:
            terms["beta"] = f.beta
        return self.finish_terms(terms, f)

    def finish_terms(self, terms: dict[str, Any], features: Features) -> dict[str, Any]:
        """Apply `finish_matrix`'s effect to the matrix terms (row_scale, diagonal)."""
        return terms

    @staticmethod
    def matrix_row_sums(terms: dict[str, Any]) -> torch.Tensor:
        """Row sums of the kernel's matrix (B, T, H): the recurrence with values of ones."""
        ones = terms["q"].new_ones(*terms["q"].shape[:-1], 1, dtype=torch.float32)
        if terms.get("beta") is not None:
            o, _ = delta_rule(terms["q"], terms["k"], ones, terms["beta"], terms["log_decay"], scale=terms["scale"])
            return o[..., 0].float()
        o, _ = linear_recurrence(terms["q"], terms["k"], ones, terms["log_decay"], terms["bonus"], scale=terms["scale"])
        return o[..., 0].float()
