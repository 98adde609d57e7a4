"""The Triton linear recurrence equals the fp32 loop, outputs and gradients (Triton's interpreter on CPU).

Select with `pytest -k triton`. On a CUDA machine the same tests run the compiled kernels, and the
`fla` peer is checked against the loop too.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import delta_rule, linear_recurrence
from kernels.linear_recurrence import BACKENDS
from tests.helpers import assert_close

triton_missing = "triton" not in BACKENDS
pytestmark = pytest.mark.skipif(triton_missing, reason="triton is not installed (pip install '.[test]')")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, T, H, K, V, decay, bonus, init, strong=False, dtype=torch.float32):
    torch.manual_seed(T * 7 + K)
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    log_decay = {"none": None, "head": F.logsigmoid(torch.randn(B, T, H) + 2),
                 "channel": -torch.exp(torch.randn(B, T, H, K) * (1.5 if strong else 1.0))}[decay]
    inputs = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), log_decay=log_decay,
                  bonus=torch.randn(H, K) if bonus else None,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {n: t.to(DEVICE).requires_grad_() if t is not None else None for n, t in inputs.items()}


def _run(fn, inputs, backend):
    o, state = fn(**inputs, output_final_state=True, backend=backend)
    g = torch.Generator(device="cpu").manual_seed(1)
    loss = ((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum()
            + (state * torch.randn(state.shape, generator=g).to(o.device)).sum())
    tensors = {n: t for n, t in inputs.items() if t is not None}
    return o, state, dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()))))


def _compare(fn, inputs, backend, tol):
    o_ref, s_ref, g_ref = _run(fn, inputs, "naive")
    o, s, g = _run(fn, inputs, backend)
    assert o.dtype == inputs["v"].dtype and o.shape == o_ref.shape
    assert_close(o.float(), o_ref.float(), tol, "output")
    assert_close(s, s_ref, tol, "final state")
    for name in g_ref:
        assert g[name].dtype == inputs[name].dtype, name
        assert_close(g[name].float(), g_ref[name].float(), tol, f"grad {name}")


CASES = [(1, "none"), (37, "none"), (100, "none"), (1, "head"), (37, "head"), (130, "head"), (1, "channel"),
         (37, "channel")]


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("T,decay", CASES, ids=[f"B2-T{t}-H2-K24-V20-{d}" for t, d in CASES])
def test_triton_linear_recurrence_matches_naive(T, decay, bonus, init):
    _compare(linear_recurrence, _inputs(2, T, 2, 24, 20, decay, bonus, init), "triton", 2e-4)


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_triton_linear_recurrence_exact_for_strong_per_channel_decay(bonus):
    """RWKV-6's decays reach −20 per step: still exact (no exp of a positive number anywhere)."""
    inputs = _inputs(1, 40, 1, 16, 16, "channel", bonus, True, strong=True)
    assert inputs["log_decay"].min() < -20
    _compare(linear_recurrence, inputs, "triton", 2e-4)


def test_triton_linear_recurrence_value_tiles_and_wide_keys():
    """V > one value tile (partial dq/dk summed over tiles) and K not a power of two."""
    _compare(linear_recurrence, _inputs(1, 70, 1, 40, 72, "head", False, True), "triton", 2e-4)


def test_triton_linear_recurrence_bf16_inputs():
    """16-bit inputs multiply in bf16 with fp32 accumulation and an fp32 state: close to the fp32 loop."""
    inputs = _inputs(1, 50, 2, 16, 16, "head", False, True, dtype=torch.bfloat16)
    _compare(linear_recurrence, inputs, "triton", 5e-2)


def test_triton_linear_recurrence_rejects_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 1, 16)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            linear_recurrence(q, q, q, backend="triton")


@cuda
def test_triton_is_auto_backend_on_cuda():
    from kernels._backend import pick_backend
    assert pick_backend("auto", BACKENDS, torch.device("cuda"), "linear_recurrence") is BACKENDS["triton"]


@cuda
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_triton_fla_peer_matches_naive(decay, bonus):
    pytest.importorskip("fla")
    if bonus and decay == "none":
        pytest.skip("chunk_rwkv6 is only defined with a decay")
    _compare(linear_recurrence, _inputs(2, 100, 2, 64, 64, decay, bonus, True), "fla", 5e-3)


@cuda
def test_triton_fla_delta_rule_peer_matches_naive():
    pytest.importorskip("fla")
    torch.manual_seed(0)
    B, T, H, K = 2, 100, 2, 64
    inputs = dict(q=torch.randn(B, T, H, K), k=F.normalize(torch.randn(B, T, H, K), dim=-1),
                  v=torch.randn(B, T, H, K), beta=torch.rand(B, T, H),
                  log_decay=F.logsigmoid(torch.randn(B, T, H) + 3), initial_state=torch.randn(B, H, K, K))
    inputs = {n: t.cuda().requires_grad_() for n, t in inputs.items()}
    _compare(delta_rule, inputs, "fla", 5e-3)
