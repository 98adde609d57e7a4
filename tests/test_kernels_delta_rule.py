"""delta_rule: the chunked form and the mixer matrix equal the fp32 loop, outputs and gradients."""
import importlib

import pytest
import torch

from kernels import delta_rule
from tests.helpers import assert_close
from tests.kernel_cases import LENGTHS, B, H, K, compare, delta_inputs


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
@pytest.mark.parametrize("T", LENGTHS, ids=[f"B{B}-T{t}-H{H}-K{K}" for t in LENGTHS])
def test_delta_rule_chunk_matches_naive(T, decay, init):
    compare(delta_rule, delta_inputs(T, decay, init), "chunk")


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
@pytest.mark.parametrize("T", [1, 2, 9])
def test_delta_rule_step_matches_naive(T, decay, init):
    compare(delta_rule, delta_inputs(T, decay, init), "step", tol=1e-5)


@pytest.mark.parametrize("per_step", [1.5, 7.0], ids=["halved", "pairwise"])
def test_delta_rule_chunk_exact_for_strong_decay(per_step):
    """~1.5 per step: 64-token chunks span ~96, so the call runs at 32-token chunks (factored); ~7 per step:
    even 16-token chunks span beyond the policy's safe span, so the ratios are taken pairwise."""
    from kernels.chunking import CHUNK, DENORMALS

    inputs = delta_inputs(200, True, True)
    with torch.no_grad():
        inputs["log_decay"].copy_(-per_step * (0.8 + 0.4 * torch.rand(B, 200, H)))
    span = lambda length: -inputs["log_decay"][:, :length].sum(1)
    if per_step > 5:
        assert (span(DENORMALS.delta_min_chunk) > DENORMALS.safe_span).all()
    else:
        assert (span(CHUNK) > DENORMALS.delta_halve_span).all() and (span(CHUNK // 2) < DENORMALS.delta_halve_span).all()
    compare(delta_rule, inputs, "chunk")


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_delta_rule_split_in_two_calls(backend):
    inputs = {n: t.detach() if t is not None else None for n, t in delta_inputs(150, True, True).items()}
    full, full_state = delta_rule(**inputs, output_final_state=True, backend=backend)
    cut = 70
    seq = ("q", "k", "v", "beta", "log_decay")
    first = {n: (t[:, :cut] if n in seq else t) for n, t in inputs.items()}
    second = {n: (t[:, cut:] if n in seq else t) for n, t in inputs.items()}
    o1, s1 = delta_rule(**first, output_final_state=True, backend=backend)
    second["initial_state"] = s1
    o2, s2 = delta_rule(**second, output_final_state=True, backend=backend)
    assert_close(torch.cat([o1, o2], dim=1), full, 1e-4, "split output")
    assert_close(s2, full_state, 1e-4, "split state")


@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
def test_delta_rule_matrix_times_v_equals_output(decay):
    from kernels import delta_rule_matrix

    inputs = {n: t.detach() if t is not None else None for n, t in delta_inputs(100, decay, False).items()}
    o, _ = delta_rule(**inputs, backend="naive")
    M = delta_rule_matrix(inputs["q"], inputs["k"], inputs["beta"], inputs["log_decay"])
    assert_close(torch.einsum("bhts,bshv->bthv", M, inputs["v"]), o, 1e-4, "M @ v")


@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
def test_delta_rule_matrix_gradients_equal_the_loops(decay):
    """The matrix_mixing stage trains through the matrix: d⟨M v, w⟩ equals d⟨o, w⟩ of the fp32 loop."""
    from kernels import delta_rule_matrix

    inputs = {n: t.detach() if t is not None else None for n, t in delta_inputs(37, decay, False).items()}
    leaves = [n for n in ("q", "k", "beta", "log_decay") if inputs[n] is not None]
    weights = torch.randn_like(inputs["v"])

    def grads(output_of):
        tensors = {n: (t.clone().requires_grad_(True) if n in leaves else t) for n, t in inputs.items()}
        return torch.autograd.grad((output_of(tensors) * weights).sum(), [tensors[n] for n in leaves])

    want = grads(lambda t: delta_rule(**t, backend="naive")[0])
    got = grads(lambda t: torch.einsum("bhts,bshv->bthv", delta_rule_matrix(t["q"], t["k"], t["beta"],
                                                                            t["log_decay"]), t["v"]))
    for name, a, b in zip(leaves, got, want):
        assert_close(a, b, 1e-4, f"d/d{name}")


def test_auto_gives_16_bit_inputs_on_cuda_the_chunk_form_until_triton_is_proven_for_them():
    """The Triton kernel stopped on an illegal memory access with bf16 inputs on an H100 (docs/gpus.md); fp32 inputs
    keep it, and the CPU keeps its own choice whatever the dtype."""
    delta_module = importlib.import_module("kernels.delta_rule")  # the module: `kernels.delta_rule` is the function
    from kernels.delta_rule import auto_backend

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for dtype in (torch.bfloat16, torch.float16):
        assert auto_backend(cuda, dtype) == "chunk"
    if "triton" in delta_module.BACKENDS:
        assert auto_backend(cuda, torch.float32) == "triton"
    assert auto_backend(cpu, torch.bfloat16) == auto_backend(cpu, torch.float32) == "native"


def test_delta_rule_auto_runs_the_backend_auto_backend_names(monkeypatch):
    delta_module = importlib.import_module("kernels.delta_rule")
    calls = []
    chunk = delta_module.BACKENDS["chunk"]
    monkeypatch.setitem(delta_module.BACKENDS, "chunk", lambda *a, **kw: calls.append("chunk") or chunk(*a, **kw))
    monkeypatch.setattr(delta_module, "auto_backend", lambda device, dtype: "chunk")
    inputs = delta_inputs(9, True, False)
    delta_rule(**inputs)
    assert calls == ["chunk"]
