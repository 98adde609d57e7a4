"""kernels.decay_gate: a sigmoid decay gate in log space and its complement (GLA's and MetaLA's). The compiled pass
against the written-out formula in float64 on odd sizes (one value, below, at and between vector lengths; both ends
of the sigmoid, values near 0 where 1 − α would cancel), several temperatures, with and without the complement;
bf16 and strided inputs; the torch form's gradients against float64; which inputs take the compiled pass (no
gradient, on CPU; autocast does not matter for a map in fp32); argument errors; the two students' features on it.
Compiled tests are skipped where the extension cannot be built."""
import pytest
import torch
import torch.nn.functional as F

from kernels import native
from kernels.decay_gate import decay_gate

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
EDGES = [0.0, 1e-8, -1e-8, 1e-3, -1e-3, 0.5, -0.5, 5.0, -5.0, 17.0, -17.0, 30.0, -30.0, 80.0, -80.0, 150.0, -150.0]


def _exact(x, temperature):
    """log α = log σ(x) / τ and 1 − α in float64."""
    log_decay = F.logsigmoid(x.double()) / temperature
    return log_decay, -torch.expm1(log_decay)


def _values(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 8
    edges = torch.tensor(EDGES)[:n]
    x[:len(edges)] = edges
    return x


def _assert_relative(y, exact, rtol):
    """|y − exact| ≤ rtol |exact| wherever exact is a normal float (values below ~1e-37 may flush, either way)."""
    error = (y.double() - exact).abs()
    normal = exact.abs() > 1e-30
    assert (error[normal] <= rtol * exact[normal].abs()).all(), (error[normal] / exact[normal].abs()).max()
    assert (error[~normal] <= 1e-30).all()


@needs_build
@pytest.mark.parametrize("temperature", [1.0, 16.0, 3.0])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 23, 40, 4099])
def test_the_compiled_pass_matches_the_formula(n, temperature):
    x = _values(n, seed=n)
    before = x.clone()
    with torch.no_grad():
        log_decay, complement = decay_gate(x, temperature, complement=True, backend="native")
        alone = decay_gate(x, temperature, backend="native")
        torch_log, torch_complement = decay_gate(x, temperature, complement=True, backend="torch")
    assert torch.equal(x, before) and torch.equal(log_decay, alone)
    assert log_decay.shape == complement.shape == x.shape and log_decay.dtype == complement.dtype == torch.float32
    exact_log, exact_complement = _exact(x, temperature)
    # a few ulps of relative error everywhere, 1 − α near 0 included (where 1 − exp(log α) would lose every digit)
    _assert_relative(log_decay, exact_log, 6e-7)
    _assert_relative(complement, exact_complement, 6e-7)
    # and no less exact than the torch form in fp32, within a few of its ulps
    for ours, theirs, exact in ((log_decay, torch_log, exact_log), (complement, torch_complement, exact_complement)):
        assert (ours.double() - exact).abs().max() <= 4 * (theirs.double() - exact).abs().max() + 1e-37


@needs_build
def test_every_shape_and_stride_reads_the_same_values():
    """(B, T, H, K) as the students give it, a head slice of a wider tensor, and bf16 (read exactly as fp32)."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 37, 6, 5, generator=g) * 6
    strided = wide[:, :, 1::2]
    with torch.no_grad():
        for x in (wide, strided, strided.bfloat16()):
            log_decay, complement = decay_gate(x, 16.0, complement=True, backend="native")
            assert log_decay.shape == x.shape and log_decay.is_contiguous() and log_decay.dtype == torch.float32
            flat_log, flat_complement = decay_gate(x.float().flatten(), 16.0, complement=True, backend="native")
            assert torch.equal(log_decay.flatten(), flat_log) and torch.equal(complement.flatten(), flat_complement)
            exact_log, exact_complement = _exact(x.float(), 16.0)
            _assert_relative(log_decay, exact_log, 6e-7)
            _assert_relative(complement, exact_complement, 6e-7)


def test_the_torch_forms_gradients_match_float64():
    x = _values(40, seed=5).requires_grad_()
    log_decay, complement = decay_gate(x, 16.0, complement=True, backend="torch")
    probe_log, probe_complement = torch.randn(40), torch.randn(40)
    grad, = torch.autograd.grad((log_decay * probe_log + complement * probe_complement).sum(), x)
    double = x.detach().double().requires_grad_()
    exact_log, exact_complement = _exact(double, 16.0)
    reference, = torch.autograd.grad((exact_log * probe_log.double() + exact_complement * probe_complement.double())
                                     .sum(), double)
    torch.testing.assert_close(grad.double(), reference, rtol=1e-5, atol=1e-12)


@needs_build
@pytest.mark.parametrize("case", ["no_grad", "grad", "autocast", "bf16"])
def test_which_inputs_take_the_compiled_pass(compiled_calls, case):
    x = _values(24).view(1, 3, 2, 4)
    if case == "grad":
        log_decay = decay_gate(x.requires_grad_(), 16.0)
        assert log_decay.requires_grad
    elif case == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            decay_gate(x, 16.0)
    else:
        with torch.no_grad():
            decay_gate(x.bfloat16() if case == "bf16" else x, 16.0, complement=True)
    # no gradient to record: compiled (an elementwise fp32 map, so autocast and bf16 inputs too); else the torch form
    assert compiled_calls == ([] if case == "grad" else ["decay_gate"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-16.0), "temperature must be > 0"),
    (dict(backend="cuda_only"), "unknown backend"),
])
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decay_gate(torch.randn(1, 5, 2, 8), **kwargs)


def test_an_integer_input_is_refused():
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        decay_gate(torch.arange(8), 16.0)


@needs_build
@pytest.mark.parametrize("name", ["metala", "gla"])
def test_the_students_features_match_the_torch_forms(name):
    """The mixers' gates through the compiled pass give the torch form's features within rounding; with a gradient
    to record, exactly the torch form (training is unchanged)."""
    from students.base import MixerConfig
    from students.registry import build_mixer

    torch.manual_seed(0)
    mixer = build_mixer(name, MixerConfig(hidden_size=64, num_heads=2, head_dim=32, num_kv_heads=2))
    x = torch.randn(1, 19, 64) * 3
    with torch.no_grad():
        compiled = mixer.featurize(x, {})
        with native.disabled():
            reference = mixer.featurize(x, {})
    for field in ("log_decay", "k"):
        torch.testing.assert_close(getattr(compiled, field), getattr(reference, field), rtol=1e-6, atol=1e-7)
    training = mixer.featurize(x, {})
    assert training.log_decay.requires_grad
    with native.disabled():
        reference = mixer.featurize(x, {})
    assert torch.equal(training.log_decay, reference.log_decay) and torch.equal(training.k, reference.k)
