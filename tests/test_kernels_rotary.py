"""kernels.rotary: RoPE against the rotation written out in float64 (the torch form and the compiled pass), the
compiled pass against the torch form on odd shapes and head views, and the training form (inductor) against the
torch form bit for bit, outputs and gradients, in fp32 and bf16; which calls take which form."""
import math

import pytest
import torch

from kernels import native
from kernels.rotary import native as rotary_native_module
from kernels.rotary import rotary, rotary_inductor

needs_native = pytest.mark.skipif(native.module() is None, reason="the C++ extension cannot be built here")


def _angles(T, D, offset=0, theta=10000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    freqs = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos()[None, :, None].float(), emb.sin()[None, :, None].float()


@pytest.mark.parametrize("backend", ["torch", pytest.param("native", marks=needs_native)])
@pytest.mark.parametrize("T, D", [(7, 10), (1, 34), (6, 48)])
def test_rotary_rotates_each_channel_pair_by_its_angle(backend, T, D):
    """Channel i and i + D/2 form a pair, rotated by position · θ^(−2i/D) (RoFormer eq. 34, Llama's layout); D/2 of
    5, 17 and 24 channels take the compiled pass's vector blocks, its scalar tail, or both."""
    g = torch.Generator().manual_seed(0)
    B, H, offset = 2, 3, 5
    x = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    cos, sin = _angles(T, D, offset)
    with torch.no_grad():
        y = rotary(x.float(), cos, sin, backend=backend)
    want = torch.empty_like(x)
    for t in range(T):
        for i in range(D // 2):
            angle = (offset + t) * 10000.0 ** (-2 * i / D)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[:, t, :, i], x[:, t, :, i + D // 2]
            want[:, t, :, i], want[:, t, :, i + D // 2] = a * c - b * s, b * c + a * s
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)
    assert y.dtype == torch.float32 and rotary(x.bfloat16(), cos, sin, backend=backend).dtype == torch.bfloat16


@needs_native
@pytest.mark.parametrize("shape", [(2, 37, 3, 16), (1, 19, 5, 6), (3, 1, 4, 64), (1, 130, 2, 34)])
def test_the_compiled_pass_gives_the_torch_forms_values_on_head_views(shape):
    """As a mixer calls it: q or k split into heads from a projection's output (heads H·D apart, rows not
    contiguous when the view is a slice of a wider product), and a decoded token (T = 1). Every value within an
    ulp or two of the torch form's (the pass may fuse a product and a sum)."""
    g = torch.Generator().manual_seed(1)
    B, T, H, D = shape
    cos, sin = _angles(T, D, offset=11)
    wide = torch.randn(B, T, 2 * H * D + 3, generator=g)  # q beside other columns, as a stacked projection's output
    x = wide[..., 3:3 + H * D].view(B, T, H, D)
    with torch.no_grad():
        y = rotary(x, cos, sin)
    want = rotary(x, cos, sin, backend="torch")
    assert y.is_contiguous() and y.dtype == torch.float32
    torch.testing.assert_close(y, want, rtol=2e-7, atol=2e-7)


@needs_native
def test_auto_takes_the_compiled_pass_for_fp32_without_a_gradient_only(monkeypatch):
    torch_calls = []
    form = rotary_native_module.rotary_torch
    monkeypatch.setattr(rotary_native_module, "rotary_torch", lambda *a: torch_calls.append(a[0].dtype) or form(*a))
    cos, sin = _angles(5, 8)
    x = torch.randn(2, 5, 3, 8)
    with torch.no_grad():
        rotary(x, cos, sin)
        assert torch_calls == []
        rotary(x.bfloat16(), cos, sin)
    assert torch_calls == [torch.bfloat16]


@needs_native
def test_the_compiled_pass_checks_its_angles_count():
    cos, sin = _angles(4, 8)
    with pytest.raises(RuntimeError, match="rotary: cos and sin must hold T x D values"):
        native.module().rotary(torch.randn(1, 5, 2, 8), cos, sin)
    with pytest.raises(RuntimeError, match="rotary: x must be"):
        native.module().rotary(torch.randn(1, 4, 2, 7), cos, sin)


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
