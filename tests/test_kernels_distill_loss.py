"""fused_distillation_loss: chunk, native (compiled per-row pass on CPU) and Triton (interpreter on CPU) forms against
the naive one, the naive one against the materialised losses of `bench.distill.losses`."""
import functools

import pytest
import torch

from bench.distill import losses
from kernels import fused_distillation_loss, native
from kernels.distill_loss import BACKENDS
from kernels.distill_loss.chunk import IGNORE, chunk_math_native, chunk_math_torch, distill_loss_chunk
from kernels.distill_loss.naive import distill_loss_naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton compiles on CUDA, interprets on CPU


def _inputs(B, T, V, D, Dt, teacher_form, hidden_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g).to(DEVICE, hidden_dtype).requires_grad_(True)
    weight = (torch.randn(V, D, generator=g) / D**0.5 * 3).to(DEVICE).requires_grad_(True)
    ids = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    teacher_hidden = torch.randn(B, T, Dt, generator=g).to(DEVICE)
    teacher_weight = (torch.randn(V, Dt, generator=g) / Dt**0.5 * 3).to(DEVICE)
    if teacher_form == "logits":
        teacher = {"teacher_logits": teacher_hidden @ teacher_weight.T}
    else:
        teacher = {"teacher_hidden": teacher_hidden, "teacher_weight": teacher_weight}
    return hidden, weight, ids, teacher


def _value_and_grads(fn, hidden, weight, ids, teacher, **kwargs):
    loss, metrics = fn(hidden, weight, ids, **teacher, **kwargs)
    grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))
    return loss, metrics, grad_hidden, grad_weight


def _assert_close(got, want, rtol=1e-5):
    loss, metrics, grad_hidden, grad_weight = got
    ref_loss, ref_metrics, ref_grad_hidden, ref_grad_weight = want
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=0)
    for key in ("kl", "ce"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=rtol)
    scale_h, scale_w = ref_grad_hidden.abs().max(), ref_grad_weight.abs().max()
    torch.testing.assert_close(grad_hidden / scale_h, ref_grad_hidden / scale_h, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_weight / scale_w, ref_grad_weight / scale_w, rtol=0, atol=1e-5)


# (B, T, V, D, Dt, chunk): chunks that do not divide B·T, one chunk larger than B·T, one token per chunk
SHAPES = [(2, 37, 101, 24, 24, 16), (1, 63, 257, 16, 32, 50), (3, 5, 64, 8, 8, 100), (2, 9, 33, 8, 12, 1)]
WEIGHTS = [(1.0, 0.0), (0.0, 1.0), (0.7, 0.3)]


def _id(shape):
    return "B{}-T{}-V{}-D{}-Dt{}-C{}".format(*shape)


@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_naive_equals_bench_losses_on_materialised_logits(teacher_form, temperature):
    hidden, weight, ids, teacher = _inputs(2, 37, 101, 24, 20, teacher_form)
    teacher_logits = teacher.get("teacher_logits")
    if teacher_logits is None:
        teacher_logits = teacher["teacher_hidden"] @ teacher["teacher_weight"].T
    want = losses.distillation_loss(teacher_logits, hidden @ weight.T, ids, temperature, 0.7, 0.3)
    got = distill_loss_naive(hidden, weight, ids, **teacher, temperature=temperature, kl_weight=0.7, ce_weight=0.3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=0)
    assert got[1] == pytest.approx(want[1], rel=1e-6)


def test_naive_computes_in_fp64_for_fp64_inputs():
    """The benchmarks' reference: fp64 inputs stay fp64 end to end (fp32 and bf16 inputs compute in fp32)."""
    hidden, weight, ids, teacher = _inputs(2, 37, 101, 24, 20, "hidden")
    wide = {n: t.double() for n, t in teacher.items()}
    exact, _ = distill_loss_naive(hidden.double(), weight.double(), ids, **wide, temperature=2.0, ce_weight=0.3)
    single, _ = distill_loss_naive(hidden, weight, ids, **teacher, temperature=2.0, ce_weight=0.3)
    half, _ = distill_loss_naive(hidden.bfloat16(), weight.bfloat16(), ids, **teacher, temperature=2.0, ce_weight=0.3)
    assert (exact.dtype, single.dtype, half.dtype) == (torch.float64, torch.float32, torch.float32)
    assert exact.item() != single.item() and exact.item() == pytest.approx(single.item(), rel=1e-5)


def _check_backend(backend, shape, teacher_form, temperature, weights, **fn_kwargs):
    B, T, V, D, Dt, chunk = shape
    hidden, weight, ids, teacher = _inputs(B, T, V, D, Dt, teacher_form)
    kwargs = dict(temperature=temperature, kl_weight=weights[0], ce_weight=weights[1])
    want = _value_and_grads(distill_loss_naive, hidden, weight, ids, teacher, **kwargs)
    fn = functools.partial(fused_distillation_loss, backend=backend) if not fn_kwargs else \
        functools.partial(distill_loss_chunk, **fn_kwargs)
    _assert_close(_value_and_grads(fn, hidden, weight, ids, teacher, chunk_size=chunk, **kwargs), want)


@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: f"kl{w[0]}-ce{w[1]}")
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_chunk_matches_naive_values_and_grads(shape, teacher_form, temperature, weights):
    _check_backend("chunk", shape, teacher_form, temperature, weights)


needs_build = pytest.mark.skipif(DEVICE != "cpu" or native.module() is None,
                                 reason="the C++ kernels run on CPU and cannot be built here")


@needs_build
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: f"kl{w[0]}-ce{w[1]}")
@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_native_matches_naive_values_and_grads(shape, teacher_form, weights):
    _check_backend("native", shape, teacher_form, 1.0, weights)


@needs_build
@pytest.mark.parametrize("write_grad", [True, False])
def test_native_rows_match_the_torch_chunk_math_on_odd_widths_wide_logits_and_missing_targets(write_grad):
    """V = 1003 (a tail after the 8-wide vectors), logits up to ±60, every third row without a target."""
    g = torch.Generator().manual_seed(1)
    rows, V = 37, 1003
    student, teacher = torch.randn(rows, V, generator=g) * 20, torch.randn(rows, V, generator=g) * 20
    targets = torch.randint(0, V, (rows,), generator=g)
    targets[::3] = IGNORE
    got_grad, want_grad = student.clone(), student.clone()
    got = chunk_math_native(got_grad, teacher, targets, 1.0, 0.3, 0.05, write_grad=write_grad)
    want = chunk_math_torch(want_grad, teacher.clone(), targets, 1.0, 0.3, 0.05, write_grad=True)
    log_q, log_p = torch.log_softmax(student.double(), -1), torch.log_softmax(teacher.double(), -1)
    valid = targets != IGNORE
    exact = ((log_p.exp() * (log_p - log_q)).sum(), -log_q[valid, targets[valid]].sum())
    for value, reference, exact_value in zip(got, want, exact):
        assert value.item() == pytest.approx(exact_value.item(), rel=1e-5)
        assert abs(value.item() - exact_value.item()) <= 2 * abs(reference.item() - exact_value.item()) + 1e-4
    if write_grad:
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)
    else:
        assert not torch.equal(got_grad, student)  # the row pass overwrites the logits either way


@needs_build
def test_native_kl_of_a_teacher_with_itself_is_zero_to_rounding():
    """KL from Σ p (z − s) + lse(s) − lse(z) cancels two O(log V) terms: on s = z it must still be ~0."""
    logits = torch.randn(16, 4096, generator=torch.Generator().manual_seed(2)) * 5
    targets = torch.zeros(16, dtype=torch.long)
    kl, _ = chunk_math_native(logits.clone(), logits, targets, 1.0, 1.0, 0.0)
    assert abs(kl.item()) / 16 < 1e-6


def test_auto_backend_on_cpu_is_native_with_the_torch_form_beside_it():
    from kernels._backend import pick_backend

    assert pick_backend("auto", BACKENDS, torch.device("cpu"), "op") is BACKENDS["native"]
    assert BACKENDS["chunk"].keywords["chunk_math"] is chunk_math_torch


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.7, 0.3)], ids=lambda w: f"kl{w[0]}-ce{w[1]}")
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=_id)
def test_triton_matches_naive_values_and_grads(shape, teacher_form, temperature, weights):
    _check_backend("triton", shape, teacher_form, temperature, weights)


@pytest.mark.slow
@pytest.mark.parametrize("block", [16, 32])
def test_triton_vocabulary_loop_over_several_partial_blocks(block):
    from kernels.distill_loss.triton import chunk_math_triton

    _check_backend(None, (2, 37, 101, 24, 20, 30), "hidden", 1.7, (0.6, 0.4),
                   chunk_math=functools.partial(chunk_math_triton, block_size=block))


def test_triton_reads_bf16_teacher_logits_like_their_fp32_copy():
    hidden, weight, ids, teacher = _inputs(2, 11, 50, 8, 8, "logits")
    low = teacher["teacher_logits"].bfloat16()
    got = _value_and_grads(functools.partial(fused_distillation_loss, backend="triton"), hidden, weight, ids,
                           {"teacher_logits": low}, ce_weight=0.5, chunk_size=7)
    want = _value_and_grads(distill_loss_naive, hidden, weight, ids, {"teacher_logits": low.float()}, ce_weight=0.5)
    _assert_close(got, want)


def test_chunk_takes_bf16_hidden_and_computes_in_fp32():
    hidden, weight, ids, teacher = _inputs(2, 37, 101, 24, 20, "hidden", hidden_dtype=torch.bfloat16)
    kwargs = dict(temperature=2.0, kl_weight=0.7, ce_weight=0.3)
    got = _value_and_grads(functools.partial(fused_distillation_loss, backend="chunk"), hidden, weight, ids, teacher,
                           chunk_size=16, **kwargs)
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.float32
    want = _value_and_grads(distill_loss_naive, hidden, weight, ids, teacher, **kwargs)
    _assert_close(got, want, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])  # τ = 1 has its own in-place path
@pytest.mark.parametrize("teacher_form", ["logits", "hidden"])
def test_bf16_products_stay_within_bf16_rounding_of_the_fp32_loss(teacher_form, temperature):
    hidden, weight, ids, teacher = _inputs(2, 37, 101, 24, 20, teacher_form)
    kwargs = dict(temperature=temperature, kl_weight=0.7, ce_weight=0.3)
    want = _value_and_grads(distill_loss_naive, hidden, weight, ids, teacher, **kwargs)
    got = _value_and_grads(functools.partial(fused_distillation_loss, backend="chunk", matmul_dtype=torch.bfloat16),
                           hidden, weight, ids, teacher, chunk_size=16, **kwargs)
    assert got[2].dtype == torch.float32 and got[3].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=2e-2, atol=0)  # bf16 keeps 8 bits: ~0.4% per product
    for g, w in zip(got[2:], want[2:]):
        assert (g - w).abs().max() <= 3e-2 * w.abs().max()
        assert (g - w).abs().max() > 0  # the products did run in bf16
    with pytest.raises(ValueError, match="matmul_dtype"):
        fused_distillation_loss(hidden, weight, ids, **teacher, matmul_dtype=torch.int8)


def test_grad_output_scales_the_saved_gradients_and_teacher_gets_none():
    hidden, weight, ids, teacher = _inputs(1, 10, 20, 8, 8, "hidden")
    teacher["teacher_hidden"].requires_grad_(True)
    loss, _ = fused_distillation_loss(hidden, weight, ids, **teacher, ce_weight=0.5, chunk_size=3, backend="chunk")
    (3 * loss).backward()
    assert teacher["teacher_hidden"].grad is None
    want = _value_and_grads(distill_loss_naive, hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True),
                            ids, {k: v.detach() for k, v in teacher.items()}, ce_weight=0.5)
    torch.testing.assert_close(hidden.grad, 3 * want[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, 3 * want[3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_math, temperature, buffers", [
    (chunk_math_torch, 1.0, 3),  # the logits and the torch form's two scratch buffers
    (chunk_math_torch, 2.0, 1),
    (lambda *args, **kwargs: chunk_math_torch(*args, **kwargs), 1.0, 1),  # a form that takes no scratch (as Triton's)
], ids=["torch-tau1", "torch-tau2", "other-tau1"])
def test_chunk_sized_buffers_are_made_only_for_the_forms_that_fill_them(monkeypatch, chunk_math, temperature, buffers):
    """The loss's peak memory is a few (chunk, V) fp32 buffers: idle scratch buffers would double it."""
    chunk, V = 4, 53
    hidden, weight, ids, teacher = _inputs(2, 7, V, 8, 8, "logits")
    made, empty = [], torch.empty

    def counting_empty(*size, **kwargs):
        out = empty(*size, **kwargs)
        if tuple(out.shape) == (chunk, V) and out.dtype == torch.float32:
            made.append(out.shape)
        return out

    with monkeypatch.context() as patch:  # only this call counted; the suite's own patches stay
        patch.setattr(torch, "empty", counting_empty)
        got = _value_and_grads(distill_loss_chunk, hidden, weight, ids, teacher, temperature=temperature,
                               ce_weight=0.3, chunk_size=chunk, chunk_math=chunk_math)
    assert len(made) == buffers
    want = _value_and_grads(distill_loss_naive, hidden, weight, ids, teacher, temperature=temperature, ce_weight=0.3)
    _assert_close(got, want)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden=(2, 5)), "student_hidden (B, T, D)"),
    (dict(weight=(7, 9)), "student_weight (V, D)"),
    (dict(ids=(2, 4)), "input_ids must be (B, T)"),
    (dict(teacher={}), "either teacher_logits or teacher_hidden"),
    (dict(teacher={"teacher_logits": (2, 5, 8)}), "teacher_logits must be (B, T, V)"),
    (dict(teacher={"teacher_hidden": (2, 5, 4)}), "teacher_hidden must be (B, T, Dt)"),
    (dict(teacher={"teacher_hidden": (2, 5, 4), "teacher_weight": (7, 3)}), "teacher_hidden must be (B, T, Dt)"),
    (dict(backend="cuda"), "unknown backend 'cuda'"),
])
def test_bad_shapes_give_one_clear_error(kwargs, message):
    teacher = {k: torch.randn(*v) for k, v in kwargs.get("teacher", {"teacher_logits": (2, 5, 7)}).items()}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fused_distillation_loss(torch.randn(*kwargs.get("hidden", (2, 5, 3))), torch.randn(*kwargs.get("weight", (7, 3))),
                                torch.zeros(*kwargs.get("ids", (2, 5)), dtype=torch.long), **teacher,
                                backend=kwargs.get("backend", "auto"))
