"""What the chunked torch forms of both recurrences share: the chunk layout, the chunk-to-chunk scan, and
the numerical policy that keeps every factor a normal fp32 number.

Layout: (B, T, H, ·) inputs become chunk-major (N, B, H, C, ·) tensors, so each chunk's slice of the carried
states is one contiguous block. The carried state is the only sequential part: `scan` runs it as one
in-place loop over chunks and `scan_backward` as one loop back (autograd through a Python loop would record
a graph node per chunk).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK = 64


@dataclass(frozen=True)
class DenormalPolicy:
    """Where the chunked forms change form so that no factor overflows and no product is denormal.

    Decays within a chunk are factored about a reference point, exp(b_t − b_s) = exp(b_t − c)·exp(c − b_s),
    so the scores are one matrix product. That is exact while each factor stays a normal fp32 number
    (|exponent| ≤ 87), and fast only while every *product* of factors does too: a denormal operand takes a
    CPU matmul or triangular solve ~100× off its fast path (not wrong, only slow). Hence:

    - `factor_range`: the widest log-decay span a chunk (or sub-block) is factored over; its factors lie
      within exp(±factor_range/2). Wider chunks take the stable form (pairwise differences, every kept
      exponent ≤ 0; per-channel decays halved recursively down to `subchunk` tokens).
    - `safe_span`: beyond it a product of two factors can leave fp32's normal range. When more than
      `halve_share` of the chunks span beyond it while every half-chunk spans within it, the linear
      recurrence runs at half the chunk size; factors of chunks that take the stable form are clamped at
      −safe_span/2 so that no product of two is denormal.
    - `exp_floor`: exponentials below it are set to exactly 0 (anything they meet is at most
      exp(factor_range/2), so a dropped term is below exp(exp_floor + factor_range/2)).
    - Delta rule (its solve and state products chain three decayed factors): decays below `delta_floor`
      are dropped, chunks are factored only when they span at most `safe_span`, and a call runs at half the
      chunk size (down to `delta_min_chunk`) while a chunk spans beyond `delta_halve_span`.
    """

    factor_range: float = 120.0
    safe_span: float = 84.0
    halve_share: float = 1 / 8
    exp_floor: float = -80.0
    subchunk: int = 8
    delta_halve_span: float = 64.0
    delta_min_chunk: int = 16

    @property
    def delta_floor(self) -> float:
        return -self.safe_span / 2


DENORMALS = DenormalPolicy()


def chunk_view(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, H, ...) -> (N, B, H, C, ...) view, zero padded at the end (a copy only when padding)."""
    pad = n_chunks * chunk - x.shape[1]
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 3) + [0, 0, 0, pad])
    return x.unflatten(1, (n_chunks, chunk)).permute(1, 0, 3, 2, *range(4, x.dim() + 1))


def to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """(B, T, H, ...) -> contiguous (N, B, H, C, ...)."""
    return chunk_view(x, n_chunks, chunk).contiguous()


def from_chunks(o: torch.Tensor, length: int, scale: float = 1.0, dtype: torch.dtype | None = None):
    """scale · o, (N, B, H, C, V) -> contiguous (B, T, H, V) in `dtype`, dropping the padding."""
    return _FromChunks.apply(o, length, scale, dtype or o.dtype)


class _FromChunks(torch.autograd.Function):
    """The output's layout change, with the attention scale and the cast riding on the same pass each way.
    Its backward hands on a contiguous chunk-layout gradient: autograd's own permute backward passes a
    strided view, and the batched products that read it then loop per matrix."""

    @staticmethod
    def forward(ctx, o, length, scale, dtype):
        N, B, H, C, V = o.shape
        ctx.chunks, ctx.scale = (N, C), scale
        out = o.new_empty(B, N * C, H, V, dtype=dtype)
        torch.mul(o.permute(1, 0, 3, 2, 4), scale, out=out.view(B, N, C, H, V))
        return out if length == N * C else out[:, :length].contiguous()

    @staticmethod
    def backward(ctx, grad):
        N, C = ctx.chunks
        grad = chunk_view(grad, N, C)
        out = torch.empty(grad.shape, dtype=torch.float32, device=grad.device)
        return torch.mul(grad, ctx.scale, out=out), None, None, None


def exp_floored(x: torch.Tensor, floor: float = DENORMALS.exp_floor) -> torch.Tensor:
    """exp(x), exactly 0 below `floor` (see `DenormalPolicy.exp_floor`)."""
    return F.threshold(x, floor, float("-inf")).exp_()  # exp(−inf) = 0 exactly, and its gradient 0


def masked_exp(diff: torch.Tensor, mask: torch.Tensor, floor: float = DENORMALS.exp_floor) -> torch.Tensor:
    """exp(diff) where mask (there diff ≤ 0), else 0."""
    return torch.where(mask, exp_floored(diff.clamp(max=0.0), floor), 0.0)


def scan(chunk_kv: torch.Tensor, initial_state: torch.Tensor, step) -> torch.Tensor:
    """S_0 = initial_state, S_{n+1} = step(kv_n, n, S_n, out): one in-place loop over contiguous chunk slices.
    Returns the states (N+1, ...)."""
    states = chunk_kv.new_empty((chunk_kv.shape[0] + 1,) + chunk_kv.shape[1:])
    states[0] = initial_state
    state_of = states.unbind(0)  # views made once: the loop body is the one product per chunk
    for n, kv in enumerate(chunk_kv.unbind(0)):
        step(kv, n, state_of[n], state_of[n + 1])
    return states


def scan_backward(grad_states: torch.Tensor, step):
    """The gradient of `scan` for a step linear in S: dS_n = G_n + step_backᵀ(dS_{n+1}), written as
    step(G_n, n, dS_{n+1}, out). Returns d kv (= dS_{n+1} per chunk, filled in place) and dS_0."""
    N = grad_states.shape[0] - 1
    grad_states = grad_states.contiguous()
    grad_kv = torch.empty_like(grad_states[1:])
    grad_kv[N - 1] = grad_states[N]
    grad_of, given = grad_kv.unbind(0), grad_states.unbind(0)
    for n in range(N - 1, 0, -1):
        step(given[n], n, grad_of[n], grad_of[n - 1])
    return grad_kv, step(given[0], 0, grad_of[0], None)
