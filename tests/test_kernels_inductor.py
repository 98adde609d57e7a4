"""kernels._inductor: a torch form compiled for training only where a gradient is recorded on a large enough call,
the plain form otherwise, when switched off, and when compiling fails (one warning). And the read-out norm's
training form against its torch form (the token shift's: tests/test_kernels_ddlerp.py)."""
import pytest
import torch

from kernels import native
from kernels._inductor import CompiledForTraining
from kernels.head_norm import head_norm


def test_the_compiled_form_runs_only_for_large_calls_while_on_and_falls_back_when_compiling_fails(monkeypatch):
    calls = []
    form = CompiledForTraining(lambda x: x * 2, "the doubling", lambda x: x.shape[0], min_tokens=10)
    form.compiled = lambda x: calls.append("compiled") or x * 2
    assert torch.equal(form(torch.ones(9)), torch.full((9,), 2.0)) and calls == []  # below min_tokens
    form(torch.ones(10))
    assert calls == ["compiled"]
    monkeypatch.setenv("DISTILL_BENCH_COMPILE", "0")
    form(torch.ones(10))
    assert calls == ["compiled"]
    monkeypatch.delenv("DISTILL_BENCH_COMPILE")

    def broken(x):
        raise RuntimeError("no C++ compiler\nsecond line")

    form.compiled = broken
    with pytest.warns(RuntimeWarning, match="the doubling could not be compiled for training \\(no C\\+\\+ compiler\\)"):
        assert torch.equal(form(torch.ones(10)), torch.full((10,), 2.0))
    assert form.failed
    form.compiled = lambda x: calls.append("compiled") or x * 2
    form(torch.ones(10))  # once failed, the plain form for the rest of the process
    assert calls == ["compiled"]


def test_every_shape_and_autocast_state_gets_its_own_compiled_entry_past_dynamos_default_limit():
    """A sweep's runs share one process: each student, shape and autocast state is another entry of the same form's
    cache. At dynamo's default limit (8) the later ones ran the torch form, so a run's numbers depended on the runs
    before it."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(tuple(tuple(x.shape) for x in example_inputs))
        return graph.forward

    def scaled(x):
        return x * 2 + 1

    form = CompiledForTraining(scaled, "the scaling", lambda x: x.numel(), min_tokens=1, backend=counting_backend)
    variants = [(width, autocast) for width in range(1, 8) for autocast in (False, True)]  # 14 entries
    for width, autocast in variants:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            assert torch.equal(form(torch.ones(3, width)), torch.full((3, width), 3.0))
    assert len(graphs) == len(variants)
    for width, autocast in variants:  # each call again finds its entry: nothing compiled twice
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            form(torch.ones(3, width))
    assert len(graphs) == len(variants)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_the_norm_takes_its_training_form_only_where_a_gradient_is_recorded(monkeypatch, kind):
    from kernels.head_norm.inductor import head_norm_inductor

    calls = []
    monkeypatch.setattr(head_norm_inductor, "min_tokens", 0)
    monkeypatch.setattr(head_norm_inductor, "compiled", lambda *a: calls.append(a[4]) or head_norm_inductor.form(*a))
    x, gate = torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    weight = torch.randn(8, requires_grad=True)
    bias = torch.randn(8) if kind == "layer" else None
    with torch.no_grad():
        head_norm(x, weight, bias, gate, kind=kind)
    assert calls == []
    head_norm(x, weight, bias, gate, kind=kind).sum().backward()
    assert calls == [kind] and weight.grad is not None


@pytest.mark.skipif(native.module() is None, reason="inductor needs the C++ toolchain the extension is built with")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_the_norms_training_form_compiled_by_inductor_matches_the_torch_form(monkeypatch, autocast):
    """rms with a silu gate and layer with a sigmoid gate, odd shapes, outputs and every gradient."""
    from kernels.head_norm.inductor import head_norm_inductor

    monkeypatch.setattr(head_norm_inductor, "min_tokens", 0)
    monkeypatch.setattr(head_norm_inductor, "compiled", None)  # compiled afresh here
    g = torch.Generator().manual_seed(0)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for kind, activation, shape in (("rms", "silu", (2, 37, 3, 20)), ("layer", "sigmoid", (1, 19, 5, 12))):
        D = shape[-1]
        base = dict(x=torch.randn(shape, generator=g), weight=torch.randn(D, generator=g),
                    bias=torch.randn(D, generator=g) if kind == "layer" else None, gate=torch.randn(shape, generator=g))
        results = []
        for backend in ("native", "torch"):  # native: the training form, as a gradient is recorded
            leaves = {n: t.clone().requires_grad_() for n, t in base.items() if t is not None}
            with context:
                y = head_norm(leaves["x"], leaves["weight"], leaves.get("bias"), leaves["gate"], kind=kind,
                              activation=activation, backend=backend)
            upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad((y.float() * upstream).sum(), list(leaves.values()))
            results.append((y, dict(zip(leaves, grads))))
        (y, grads), (y_ref, grads_ref) = results
        torch.testing.assert_close(y.float(), y_ref.float(), **tol)
        for name in grads_ref:
            scale = grads_ref[name].abs().max().item()
            torch.testing.assert_close(grads[name] / scale, grads_ref[name] / scale, **tol, msg=f"{kind} {name}")
    assert head_norm_inductor.compiled is not None and not head_norm_inductor.failed
