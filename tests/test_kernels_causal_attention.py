"""kernels.causal_attention: the compiled causal softmax attention (a frozen teacher's forward) against the formula in
float64 on odd shapes (one token, lengths around the 64-query block and across the 256-key tiles, head widths off
the vector lengths, grouped queries, a value width unlike the key's), transformers' layout (heads a stride of the
token rows), bf16 inputs and autocast; sdpa's form against the same; which calls take the compiled pass (no
gradient, CPU, up to MAX_LENGTH tokens); argument errors.
Compiled tests are skipped where the extension cannot be built."""
import math

import pytest
import torch

from kernels import native
from kernels.causal_attention import causal_attention
from kernels.causal_attention import native as causal_native

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")


def _formula(q, k, v, scale):
    """softmax(q kᵀ scale + causal mask) v in float64, query head h reading key-value head h // (H / G)."""
    H, G, T = q.shape[1], k.shape[1], q.shape[2]
    k, v = (x.double().repeat_interleave(H // G, 1) for x in (k, v))
    scores = q.double() @ k.transpose(-1, -2) * scale
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def _inputs(B, H, G, T, K, V, seed=0, token_major=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if token_major:  # as transformers' projections give them: (B, T, H, D) memory viewed as (B, H, T, D)
        q = torch.randn(B, T, H, K, generator=g).transpose(1, 2)
        k = torch.randn(B, T, G, K, generator=g).transpose(1, 2)
        v = torch.randn(B, T, G, V, generator=g).transpose(1, 2)
    else:
        q, k, v = torch.randn(B, H, T, K, generator=g), torch.randn(B, G, T, K, generator=g), \
            torch.randn(B, G, T, V, generator=g)
    return q.mul(2).to(dtype), k.mul(2).to(dtype), v.to(dtype)  # scores of a few units: peaked rows as well as flat


SHAPES = [(1, 1, 1, 1, 8, 8), (2, 4, 2, 37, 64, 64), (1, 3, 1, 64, 24, 40), (1, 2, 2, 65, 33, 17),
          (2, 6, 3, 130, 16, 16), (1, 4, 4, 200, 64, 64),
          (1, 2, 1, 257, 64, 64), (1, 2, 2, 600, 24, 40)]


@needs_build
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("token_major", [False, True])
def test_compiled_matches_formula(shape, token_major):
    B, H, G, T, K, V = shape
    q, k, v = _inputs(*shape, token_major=token_major)
    out = causal_attention(q, k, v, backend="native")
    assert out.shape == (B, T, H, V) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _formula(q, k, v, 1 / math.sqrt(K)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("shape", SHAPES[1:4])
def test_torch_forms_match_formula(backend, shape):
    q, k, v = _inputs(*shape, seed=1)
    out = causal_attention(q, k, v, scale=0.3, backend=backend)
    torch.testing.assert_close(out.double(), _formula(q, k, v, 0.3), atol=1e-5, rtol=1e-5)


@needs_build
def test_compiled_bf16_sums_in_fp32():
    """bf16 inputs: widened, every sum fp32, the output rounded once to bf16 (so within bf16's rounding of the
    exact result on the same rounded inputs)."""
    q, k, v = _inputs(2, 4, 2, 100, 64, 64, seed=2, token_major=True, dtype=torch.bfloat16)
    out = causal_attention(q, k, v, backend="native")
    assert out.dtype == torch.bfloat16
    exact = _formula(q, k, v, 0.125)
    torch.testing.assert_close(out.double(), exact, atol=1e-2, rtol=2 ** -8)


@needs_build
def test_compiled_under_autocast_takes_sdpa_dtypes():
    """Under autocast the inputs are cast to its dtype as sdpa's are (a teacher's rotated q, k come fp32 and v bf16):
    the output is bf16 and matches sdpa's under the same autocast."""
    q, k, v = _inputs(2, 4, 2, 90, 64, 64, seed=3, token_major=True)
    v = v.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v, backend="native")
        reference = causal_attention(q, k, v, backend="torch")
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double(), _formula(q.bfloat16(), k.bfloat16(), v, 0.125), atol=1e-2, rtol=2 ** -8)


def test_gradient_goes_through_sdpa():
    """The compiled call has no backward: a call with a gradient to record runs sdpa, and its gradients are the
    formula's."""
    q, k, v = (x.double().requires_grad_() for x in _inputs(1, 4, 2, 40, 16, 16, seed=4))
    out = causal_attention(q, k, v, backend="native")
    assert out.requires_grad
    weights = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((_formula(q, k, v, 0.25) * weights).sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@needs_build
def test_only_calls_without_gradient_take_the_compiled_pass(monkeypatch):
    calls = []
    compiled = native.module()

    class Spy:
        def causal_attention(self, *args):
            calls.append(1)
            return compiled.causal_attention(*args)

    monkeypatch.setattr(native, "module", lambda: Spy())
    q, k, v = _inputs(1, 2, 1, 20, 8, 8)
    causal_attention(q, k, v, backend="native")
    assert calls == [1]
    causal_attention(q.requires_grad_(), k, v, backend="native")
    assert calls == [1]
    with torch.no_grad():
        causal_attention(q, k, v, backend="native")
    assert calls == [1, 1]
    q = q.detach()
    causal_attention(q, k, v, backend="native")
    assert calls == [1, 1, 1]
    monkeypatch.setattr(causal_native, "MAX_LENGTH", 19)  # longer sequences than it: sdpa, the same result
    out = causal_attention(q, k, v, backend="native")
    assert calls == [1, 1, 1]
    torch.testing.assert_close(out.double(), _formula(q, k, v, 1 / math.sqrt(8)), atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_refused():
    q, k, v = _inputs(1, 3, 2, 10, 8, 8)
    with pytest.raises(ValueError, match="G dividing H"):
        causal_attention(q, k, v)
    q, k, v = _inputs(1, 4, 2, 10, 8, 8)
    with pytest.raises(ValueError, match="G dividing H"):
        causal_attention(q, k[:, :, :9], v[:, :, :9])
    with pytest.raises(ValueError, match="4-d"):
        causal_attention(q[0], k, v)
    with pytest.raises(ValueError, match="unknown backend"):
        causal_attention(q, k, v, backend="flash")
