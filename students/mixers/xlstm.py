"""mLSTM (matrix-memory xLSTM) — Beck et al. 2024, "xLSTM", eq. 19-27; gate soft-capping from xLSTM-7B.

C_t = f_t C_{t−1} + i_t k_t v_tᵀ,  n_t = f_t n_{t−1} + i_t k_t,  h_t = o_t ⊙ C_tᵀ q_t / max(|n_tᵀ q_t|, 1)
with exponential input gate i_t = exp(ĩ_t) and sigmoid forget gate. Gate pre-activations are soft-capped
at 15 (xLSTM-7B, Beck et al. 2025), so exp(ĩ) fits fp32 and the chunked path may run unstabilised with
n riding along as a value column of ones; the reference loop uses the paper's running-max stabiliser m_t,
and the state is kept as (C′, m) with C = C′·exp(m), valid for both paths.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import linear_recurrence, native
from students.base import Features, MixerConfig, RecurrentMixer
from students.layers import HeadLayerNorm, merge_heads, split_heads, stacked_linear

GATE_SOFT_CAP = 15.0


def soft_cap(x: torch.Tensor, cap: float = GATE_SOFT_CAP) -> torch.Tensor:
    return cap * torch.tanh(x / cap)


class MLSTMMixer(RecurrentMixer):
    name = "xlstm"
    LAGGED_CONTEXT = ("k_raw", "log_input")  # what the stabilised loop reads per token instead of k

    def __init__(self, config: MixerConfig):
        super().__init__(config)
        D, H, K = config.hidden_size, config.num_heads, config.head_dim
        self.add_attention_projections()  # q, k, v, o as the teacher's
        self.o_gate = nn.Linear(D, H * K, bias=False)
        self.i_gate = nn.Linear(D, H, bias=True)
        self.f_gate = nn.Linear(D, H, bias=True)
        with torch.no_grad():  # xLSTM inits: input gate bias −10, forget gate bias linspace(3, 6)
            self.i_gate.weight.zero_()
            self.i_gate.bias.fill_(-10.0)
            self.f_gate.weight.zero_()
            self.f_gate.bias.copy_(torch.linspace(3.0, 6.0, H))
        self.norm = HeadLayerNorm(K, config.norm_eps)

    def featurize(self, x, state):
        H = self.num_heads
        projections = (self.q_proj, self.k_proj, self.v_proj, self.o_gate)
        if x.shape[1] == 1:  # a decode step: one product over the stacked weights (kept between tokens)
            q, k, v, o = stacked_linear(x, list(projections)).chunk(4, dim=-1)
        else:  # prefill and training: separate products keep each output contiguous
            q, k, v, o = (p(x) for p in projections)
        q, k, v = (split_heads(t, H) for t in (q, k, v))
        log_input = soft_cap(self.i_gate(x).float())  # ĩ_t, (B, T, H)
        log_forget = F.logsigmoid(soft_cap(self.f_gate(x).float()))
        ones = v.new_ones(*v.shape[:-1], 1, dtype=torch.float32)
        return Features(q=q, k=k.float() * log_input.exp()[..., None], v=torch.cat([v.float(), ones], -1),
                        log_decay=log_forget, value_dim=v.shape[-1], window_k=k,
                        context={"k_raw": k, "log_input": log_input, "o": o})

    def recurrence(self, f, backend, state):
        """Chunked: the unstabilised kernel (n rides along as the last value column); the state keeps C′ and m
        with C = C′·exp(m), m = 0 after a chunked call. naive and step: the paper's stabilised loop."""
        B, T, H, K = f.q.shape
        m = state.get("m", f.q.new_zeros(B, H, dtype=torch.float32))
        memory = state.get("kernel")
        if backend in ("naive", "step"):  # the loop is the paper's decode step as well as the reference
            compiled = native.one_token(f.q, memory, f.context["k_raw"], f.v) if backend == "step" else None
            if compiled is not None:  # a decoded token in one call (kernels/native), the loop's arithmetic
                o, memory, m = compiled.mlstm_step(f.q, f.context["k_raw"], f.v, f.log_decay, f.context["log_input"],
                                                   memory, m, K ** -0.5 if f.scale is None else f.scale,
                                                   not self.window)
            else:
                o, memory, m = self._stabilised_loop(f, memory, m, normalise=not self.window)
            return o, {"kernel": memory, "m": m}
        unstabilised = None if memory is None else memory * m.exp()[..., None, None]
        o, memory = linear_recurrence(f.q, f.k, f.v, f.log_decay, scale=f.scale, initial_state=unstabilised,
                                      output_final_state=True, backend=backend)
        return o, {"kernel": memory, "m": torch.zeros_like(m)}

    def _stabilised_loop(self, f, memory, m, normalise=True):
        """xLSTM eq. 19-27 with the running-max stabiliser, one token at a time in fp32. The outputs come back
        normalised, with a unit normaliser column, so `finish_core` leaves them as they are; or, with
        `normalise=False` (a window adds its terms first), as q·C and q·n, what the chunked kernel returns."""
        q, k, v = f.q.float(), f.context["k_raw"].float(), f.v.float()  # v carries the ones column (n)
        B, T, H, K = q.shape
        scale = K ** -0.5 if f.scale is None else f.scale
        memory = q.new_zeros(B, H, K, v.shape[-1]) if memory is None else memory.float()
        outputs = []
        for t in range(T):
            log_f, log_i = f.log_decay[:, t], f.context["log_input"][:, t]
            m_new = torch.maximum(log_f + m, log_i)
            forget, inp = (log_f + m - m_new).exp(), (log_i - m_new).exp()
            memory = forget[..., None, None] * memory + inp[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
            read = torch.matmul(q[:, t, :, None, :], memory).squeeze(-2) * scale  # (B, H, V + 1); einsum costs more
            if normalise:
                denom = torch.maximum(read[..., -1:].abs(), (-m_new).exp()[..., None])
                outputs.append(torch.cat([read[..., :-1] / denom, torch.ones_like(denom)], dim=-1))
            else:  # m ≤ the soft cap 15, so exp(m) fits fp32 (the premise of the unstabilised chunked form)
                outputs.append(read * m_new.exp()[..., None])
            m = m_new
        return torch.stack(outputs, 1) if T else v.new_zeros(B, 0, H, v.shape[-1]), memory, m

    def finish_core(self, o, f):
        return o[..., :f.value_dim] / o[..., f.value_dim:].abs().clamp(min=1.0)

    def finish_matrix(self, matrix, f):
        return matrix / matrix.sum(-1, keepdim=True).abs().clamp(min=1.0)

    def finish_terms(self, terms, f):
        return {**terms, "row_scale": 1.0 / self.matrix_row_sums(terms).abs().clamp(min=1.0)}

    def readout(self, core, f, x):
        gated = self.norm(core, split_heads(f.context["o"], self.num_heads), activation="sigmoid")
        return self.o_proj(merge_heads(gated).to(x.dtype))
