"""The mixer contract every student follows, and the template shared by the recurrent students.

A mixer maps hidden states (B, T, D) to (B, T, D). Every mixer offers four views of the same function:
  forward(x, state, backend="auto")  the chunked parallel form (training path),
  forward(x, state, backend="naive") the fp32 loop, short enough to check against the paper (reference),
  step(x_t, state)                   one token, O(1) state (generation path),
  mixer_matrix(x)                    M (B, H, T, T) with core output = M @ v (matrix mixing, analysis).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from kernels import delta_rule, delta_rule_matrix, linear_recurrence, linear_recurrence_matrix

State = dict[str, Any]


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
    OPTIONS: dict[str, tuple] = {}

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
        y, state = self.forward(x_t[:, None], state, backend="naive")
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
    scale: float | None = None
    value_dim: int | None = None  # v may carry extra columns (e.g. ones for a normaliser)
    context: dict[str, Any] = field(default_factory=dict)  # gates etc. for the read-out
    carry: dict[str, Any] = field(default_factory=dict)  # conv caches, token shift: part of the next state

    @property
    def values(self) -> torch.Tensor:
        return self.v if self.value_dim is None else self.v[..., :self.value_dim]


class RecurrentMixer(Mixer):
    """Template for the students built on `linear_recurrence` or `delta_rule`.

    A subclass writes `featurize` (projections, convolutions, gates -> Features) and `readout`
    (norm, output gate, output projection); the kernel call, state handling, the step and the
    materialised matrix come from here.
    """

    uses_delta_rule = False
    # init="qkv_copy": which teacher attention projection initialises which of ours (k/v expanded from GQA).
    # Mixers whose projections play other roles rename them here (Mamba: C <- W_Q, B <- W_K, x <- W_V).
    QKV_COPY = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj"}

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
            o, final = delta_rule(f.q, f.k, f.v, f.beta, f.log_decay, scale=f.scale, initial_state=state.get("kernel"),
                                  output_final_state=True, backend=backend)
        else:
            o, final = linear_recurrence(f.q, f.k, f.v, f.log_decay, f.bonus, scale=f.scale,
                                         initial_state=state.get("kernel"), output_final_state=True, backend=backend)
        return o, {"kernel": final}

    def forward(self, x, state=None, backend="auto"):
        state = state or {}
        f = self.featurize(x, state)
        o, kernel_state = self.recurrence(f, backend, state)
        y = self.readout(self.finish_core(o, f), f, x)
        return y.to(x.dtype), {**f.carry, **kernel_state}

    def core(self, x, backend="auto"):
        f = self.featurize(x, {})
        o, _ = self.recurrence(f, backend, {})
        return self.finish_core(o, f), f.values

    def mixer_matrix(self, x):
        f = self.featurize(x, {})
        if self.uses_delta_rule:
            matrix = delta_rule_matrix(f.q, f.k, f.beta, f.log_decay, scale=f.scale)
        else:
            matrix = linear_recurrence_matrix(f.q, f.k, f.log_decay, f.bonus, scale=f.scale)
        return self.finish_matrix(matrix, f)

    @property
    def supports_matrix_terms(self) -> bool:
        return not self.uses_delta_rule

    def matrix_terms(self, x):
        """M = row_scale · (scale · Σ_c q_tc k_sc exp(decay sums) + diag(diagonal)) as kernel inputs, without
        forming M; `finish_terms` adds a mixer's normaliser or skip term (its `finish_matrix`)."""
        if self.uses_delta_rule:
            return None
        f = self.featurize(x, {})
        terms = dict(q=f.q, k=f.k, log_decay=f.log_decay, bonus=f.bonus, scale=f.scale, row_scale=None, diagonal=None)
        return self.finish_terms(terms, f)

    def finish_terms(self, terms: dict[str, Any], features: Features) -> dict[str, Any]:
        """Apply `finish_matrix`'s effect to the matrix terms (row_scale, diagonal)."""
        return terms

    @staticmethod
    def matrix_row_sums(terms: dict[str, Any]) -> torch.Tensor:
        """Row sums of the kernel's matrix (B, T, H): the recurrence with values of ones."""
        ones = terms["q"].new_ones(*terms["q"].shape[:-1], 1, dtype=torch.float32)
        o, _ = linear_recurrence(terms["q"], terms["k"], ones, terms["log_decay"], terms["bonus"], scale=terms["scale"])
        return o[..., 0].float()
