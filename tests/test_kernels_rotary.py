"""kernels.rotary: RoPE against the rotation written out in float64, and its training form (inductor) against the
torch form bit for bit, outputs and gradients, on odd shapes in fp32 and bf16; which calls take the training form."""
import math

import pytest
import torch

from kernels import native
from kernels.rotary import rotary, rotary_inductor


def _angles(T, D, offset=0, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos()[None, :, None].float(), emb.sin()[None, :, None].float()


def test_rotary_rotates_each_channel_pair_by_its_angle():
    """Channel i and i + D/2 form a pair, rotated by position · θ^(−2i/D) (RoFormer eq. 34, Llama's layout)."""
    g = torch.Generator().manual_seed(0)
    B, T, H, D, offset = 2, 7, 3, 10, 5
    x = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    cos, sin = _angles(T, D, offset)
    y = rotary(x.float(), cos, sin, backend="torch")
    want = torch.empty_like(x)
    for t in range(T):
        for i in range(D // 2):
            angle = (offset + t) * 10000.0 ** (-2 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, t, :, i], x[:, t, :, i + D // 2]
            want[:, t, :, i], want[:, t, :, i + D // 2] = a * c - b * s, b * c + a * s
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)
    assert y.dtype == torch.float32 and rotary(x.bfloat16(), cos, sin).dtype == torch.bfloat16


@pytest.mark.skipif(native.module() is None, reason="inductor needs the C++ toolchain the extension is built with")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_training_form_gives_the_torch_forms_values_and_gradients_bit_for_bit(monkeypatch, dtype):
    monkeypatch.setattr(rotary_inductor, "min_tokens", 0)
    monkeypatch.setattr(rotary_inductor, "compiled", None)  # compiled afresh here
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 37, 3, 16), (1, 19, 5, 6)):
        B, T, H, D = shape
        cos, sin = _angles(T, D, offset=3)
        x = torch.randn(B, T, H * D, generator=g).to(dtype).view(shape)  # as split heads of a projection
        upstream = torch.randn(shape, generator=g)
        results = []
        for backend in ("inductor", "torch"):
            leaf = x.clone().requires_grad_()
            y = rotary(leaf, cos, sin, backend=backend)
            (y.float() * upstream).sum().backward()
            results.append((y, leaf.grad))
        (y, grad), (y_ref, grad_ref) = results
        assert y.dtype == dtype and grad.dtype == dtype
        assert torch.equal(y, y_ref), shape
        assert torch.equal(grad, grad_ref), shape
    assert rotary_inductor.compiled is not None and not rotary_inductor.failed


def test_auto_takes_the_training_form_only_where_a_gradient_is_recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(rotary_inductor, "min_tokens", 0)
    monkeypatch.setattr(rotary_inductor, "compiled", lambda *a: calls.append(a[0].shape) or rotary_inductor.form(*a))
    cos, sin = _angles(5, 8)
    x = torch.randn(2, 5, 3, 8)
    rotary(x, cos, sin)
    with torch.no_grad():
        rotary(x.requires_grad_(), cos, sin)
    assert calls == []
    rotary(x, cos, sin).sum().backward()
    assert calls == [x.shape] and x.grad is not None


@pytest.mark.parametrize("x_shape, angle_shape, match", [
    ((2, 5, 3), (1, 5, 1, 8), "x must be \\(B, T, H, D\\) with D even"),
    ((2, 5, 3, 7), (1, 5, 1, 7), "x must be \\(B, T, H, D\\) with D even"),
    ((2, 5, 3, 8), (1, 4, 1, 8), "cos must be \\(1, 5, 1, 8\\)"),
])
def test_rotary_names_a_bad_shape(x_shape, angle_shape, match):
    with pytest.raises(ValueError, match=f"rotary: {match}"):
        rotary(torch.zeros(x_shape), torch.zeros(angle_shape), torch.zeros(angle_shape))
