"""kernels.head_norm: a mixer's read-out norm, affine and gate. The compiled pass against the written-out formula in
float64 on odd shapes (one token, widths below, at and between vector lengths, strided x and gate), every kind and
activation with and without affine; saturated gates and constant rows; the torch form's gradients against float64;
which inputs take the compiled pass (no gradient, fp32 without autocast, (B, T, H, D)); argument errors; the
students' norm modules on it. Compiled tests are skipped where the extension cannot be built."""
import pytest
import torch

from kernels import native
from kernels.head_norm import head_norm

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
ACTIVATIONS = {"none": lambda g: g, "silu": lambda g: g * torch.sigmoid(g), "sigmoid": torch.sigmoid}


def _formula(x, weight, bias, gate, kind, activation, eps, augment=None):
    """The definition in float64: n(x) w + b times act(gate), x + σ(v ⊙ Σ q w k) in x's place with `augment`."""
    x = x.double()
    if augment is not None:
        q, k, v, w = (t.double() for t in augment)
        x = x + torch.sigmoid((q * w * k).sum(-1, keepdim=True) * v)
    mean = 0 if kind == "rms" else x.mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    y = y * (1 if weight is None else weight.double()) + (0 if bias is None else bias.double())
    return y if gate is None else y * ACTIVATIONS[activation](gate.double())


def _inputs(B, T, H, D, kind, affine=True, gate=True, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    if strided:  # x a head slice of a wider tensor, the gate a channel slice of a stacked projection
        x = torch.randn(B, T, 2 * H, D, generator=g)[:, :, 1::2] * 3 + 1
        gate = torch.randn(B, T, 3 * H * D, generator=g)[..., H * D:2 * H * D].reshape(B, T, H, D) * 4
    else:
        x = torch.randn(B, T, H, D, generator=g) * 3 + 1
        gate = torch.randn(B, T, H, D, generator=g) * 4 if gate else None
    weight = torch.randn(D, generator=g) if affine else None
    bias = torch.randn(D, generator=g) if affine and kind == "layer" else None
    return x, weight, bias, gate


SHAPES = [(1, 1, 4, 64), (2, 37, 3, 5), (2, 37, 3, 8), (1, 50, 4, 19), (2, 3, 2, 64)]


@needs_build
@pytest.mark.parametrize("activation", ["none", "silu", "sigmoid"])
@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_compiled_pass_matches_the_formula(shape, kind, activation):
    for affine, strided in ((True, False), (False, False), (True, True)):
        x, weight, bias, gate = _inputs(*shape, kind, affine=affine, strided=strided)
        before = x.clone()
        with torch.no_grad():
            y = head_norm(x, weight, bias, gate, kind=kind, activation=activation, eps=1e-5, backend="native")
            fp32 = head_norm(x, weight, bias, gate, kind=kind, activation=activation, eps=1e-5, backend="torch")
        assert torch.equal(x, before) and y.shape == x.shape and y.dtype == torch.float32 and y.is_contiguous()
        exact = _formula(x, weight, bias, gate, kind, activation, 1e-5)
        torch.testing.assert_close(y.double(), exact, rtol=2e-5, atol=2e-5)
        # no less exact than the torch form in fp32 (within rounding of the error itself)
        assert (y.double() - exact).abs().max() <= 4 * (fp32.double() - exact).abs().max() + 1e-6


def _augment(x, seed=1, strided=False):
    """MetaLA's (q, k, v, w) for x: k = 1 − α in (0, 1), q and v a split of a wider projection when strided."""
    g = torch.Generator().manual_seed(seed)
    B, T, H, D = x.shape
    q, v = (torch.randn(B, T, 2 * H, D, generator=g)[:, :, :H] if strided else torch.randn(x.shape, generator=g)
            for _ in range(2))
    return q, torch.rand(x.shape, generator=g), v * 3, torch.randn(H, D, generator=g)


@needs_build
@pytest.mark.parametrize("shape", [(1, 1, 4, 64), (2, 37, 3, 19), (1, 50, 4, 64), (2, 9, 2, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_the_self_augmentation_matches_the_formula(shape):
    for strided in (False, True):
        x, weight, bias, gate = _inputs(*shape, "layer", strided=strided)
        augment = _augment(x, strided=strided)
        with torch.no_grad():
            y = head_norm(x, weight, bias, gate, kind="layer", activation="silu", augment=augment, backend="native")
            fp32 = head_norm(x, weight, bias, gate, kind="layer", activation="silu", augment=augment, backend="torch")
        exact = _formula(x, weight, bias, gate, "layer", "silu", 1e-5, augment)
        torch.testing.assert_close(y.double(), exact, rtol=2e-5, atol=2e-5)
        # no less exact than the torch form, within a few fp32 ulps of the largest output (v × 3 makes them ~20)
        ulps = 4 * torch.finfo(torch.float32).eps * exact.abs().max()
        assert (y.double() - exact).abs().max() <= 4 * (fp32.double() - exact).abs().max() + ulps


def test_the_self_augmentations_gradients_match_float64():
    x, weight, bias, gate = _inputs(2, 11, 3, 19, "layer")
    q, k, v, w = _augment(x)
    leaves = [t.requires_grad_() for t in (x, weight, bias, gate, q, k, v, w)]
    y = head_norm(x, weight, bias, gate, kind="layer", activation="silu", augment=(q, k, v, w))
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((y * probe).sum(), leaves)
    double = [t.detach().double().requires_grad_() for t in leaves]
    exact = _formula(*double[:4], "layer", "silu", 1e-5, tuple(double[4:]))
    for grad, reference in zip(grads, torch.autograd.grad((exact * probe.double()).sum(), double)):
        torch.testing.assert_close(grad.double(), reference, rtol=1e-4, atol=1e-4)


@needs_build
def test_the_gate_without_a_gate_and_saturated_gates():
    x, weight, bias, _ = _inputs(2, 9, 3, 19, "layer")
    with torch.no_grad():
        plain = head_norm(x, weight, bias, kind="layer", backend="native")
    torch.testing.assert_close(plain.double(), _formula(x, weight, bias, None, "layer", "none", 1e-5),
                               rtol=2e-5, atol=2e-5)
    gate = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]).repeat(2, 9, 3, 3)[..., :19]
    for activation in ("silu", "sigmoid"):
        with torch.no_grad():
            y = head_norm(x, weight, bias, gate, kind="layer", activation=activation, backend="native")
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), _formula(x, weight, bias, gate, "layer", activation, 1e-5),
                                   rtol=2e-5, atol=2e-5)


@needs_build
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_constant_and_zero_rows_stay_finite(kind):
    x = torch.zeros(1, 4, 2, 19)
    x[:, 1] = 5.0  # a constant row: zero variance, the norm is eps's
    x[:, 2, 0, 0] = 1e-20  # tiny values
    with torch.no_grad():
        y = head_norm(x, kind=kind, eps=1e-6, backend="native")
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), _formula(x, None, None, None, kind, "none", 1e-6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["none", "silu", "sigmoid"])
@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_the_torch_forms_gradients_match_float64(kind, activation):
    x, weight, bias, gate = _inputs(2, 11, 3, 19, kind)
    leaves = [t.requires_grad_() for t in (x, weight, bias, gate) if t is not None]
    y = head_norm(x, weight, bias, gate, kind=kind, activation=activation, backend="auto")  # a gradient: torch form
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((y * probe).sum(), leaves)
    double = [t.detach().double().requires_grad_() for t in leaves]
    named = dict(zip([n for n, t in zip("xwbg", (x, weight, bias, gate)) if t is not None], double))
    exact = _formula(named["x"], named.get("w"), named.get("b"), named.get("g"), kind, activation, 1e-5)
    for grad, reference in zip(grads, torch.autograd.grad((exact * probe.double()).sum(), double)):
        torch.testing.assert_close(grad.double(), reference, rtol=1e-4, atol=1e-4)


@needs_build
def test_bf16_inputs_are_read_as_fp32():
    """A model cast to bf16: the pass reads its inputs exactly (bf16 -> fp32) and returns fp32, as the torch form."""
    x, weight, bias, gate = (t.bfloat16() for t in _inputs(2, 17, 3, 19, "layer"))
    with torch.no_grad():
        y = head_norm(x, weight, bias, gate, kind="layer", activation="silu", backend="native")
        fp32 = head_norm(x.float(), weight.float(), bias.float(), gate.float(), kind="layer", activation="silu",
                         backend="native")
    assert y.dtype == torch.float32 and torch.equal(y, fp32)


@needs_build
@pytest.mark.parametrize("case", ["no_grad", "grad", "autocast", "3d"])
def test_which_inputs_take_the_compiled_pass(compiled_calls, case):
    x, weight, _, gate = _inputs(1, 5, 2, 8, "rms")
    if case == "grad":
        head_norm(x, weight.clone().requires_grad_(), gate=gate)
    elif case == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            head_norm(x, weight, gate=gate)
    else:
        with torch.no_grad():
            head_norm(x[:, :, 0] if case == "3d" else x, weight, gate=gate[:, :, 0] if case == "3d" else gate)
    # no gradient, fp32 without autocast, (B, T, H, D): compiled; else the torch form
    assert compiled_calls == (["head_norm"] if case == "no_grad" else [])


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="batch"), "kind must be one of"),
    (dict(activation="relu"), "activation must be one of"),
    (dict(kind="rms", bias=torch.zeros(8)), "an rms norm takes no bias"),
    (dict(weight=torch.ones(7)), r"weight must be \(8,\)"),
    (dict(kind="layer", bias=torch.ones(2, 4)), r"bias must be \(8,\)"),
    (dict(gate=torch.ones(1, 5, 2, 7)), "gate must have x's shape"),
    (dict(augment=(torch.ones(1, 5, 2, 8),) * 3), r"augment must be \(q, k, v, w\)"),
    (dict(augment=(torch.ones(1, 5, 2, 8),) * 3 + (torch.ones(8),)), "augment's q, k, v must have x's shape"),
    (dict(augment=(torch.ones(1, 5, 2, 8), torch.ones(1, 5, 2, 7), torch.ones(1, 5, 2, 8), torch.ones(2, 8))),
     "augment's q, k, v must have x's shape"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        head_norm(torch.randn(1, 5, 2, 8), **kwargs)


@needs_build
def test_the_students_norm_modules_give_the_torch_forms_values():
    from students.layers import HeadLayerNorm, HeadRMSNorm

    rms, layer = HeadRMSNorm(19, 1e-5), HeadLayerNorm(19, 64e-5)
    with torch.no_grad():
        rms.weight.normal_()
        layer.norm.weight.normal_(), layer.norm.bias.normal_()
        x, gate = torch.randn(2, 13, 3, 19), torch.randn(2, 13, 3, 19)
        pairs = [(rms(x, gate), head_norm(x, rms.weight, None, gate, kind="rms", backend="torch")),
                 (layer(x, gate, "sigmoid"), head_norm(x, layer.norm.weight, layer.norm.bias, gate, kind="layer",
                                                       activation="sigmoid", eps=64e-5, backend="torch"))]
    for module_output, torch_form in pairs:
        torch.testing.assert_close(module_output, torch_form, rtol=1e-5, atol=1e-5)
