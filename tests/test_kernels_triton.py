"""The Triton kernels equal the fp32 loops, outputs and gradients (Triton's interpreter on CPU).

Select with `pytest -k triton`. On a CUDA machine the same tests run the compiled kernels, and the
`fla` peers are checked against the loops too.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from kernels import delta_rule, linear_recurrence
from kernels.linear_recurrence import BACKENDS
from tests.helpers import assert_close

triton_missing = "triton" not in BACKENDS
pytestmark = [pytest.mark.slow,  # Triton's interpreter on CPU: seconds per case
              pytest.mark.skipif(triton_missing, reason="triton is not installed (pip install '.[test]')")]
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


def _call(op, backend, **options):
    """The op through its public entry point, or its backend directly with backend-only keywords (`schedule`)."""
    if not options:
        return functools.partial(op, backend=backend)
    from kernels.delta_rule import BACKENDS as DELTA_BACKENDS
    return functools.partial((BACKENDS if op is linear_recurrence else DELTA_BACKENDS)[backend], **options)


def _run(call, inputs):
    o, state = call(**inputs, output_final_state=True)
    g = torch.Generator(device="cpu").manual_seed(1)
    loss = ((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum()
            + (state * torch.randn(state.shape, generator=g).to(o.device)).sum())
    tensors = {n: t for n, t in inputs.items() if t is not None}
    return o, state, dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()))))


def _compare(op, inputs, backend, tol, **options):
    o_ref, s_ref, g_ref = _run(_call(op, "naive"), inputs)
    o, s, g = _run(_call(op, backend, **options), inputs)
    assert o.dtype == inputs["v"].dtype and o.shape == o_ref.shape
    assert_close(o.float(), o_ref.float(), tol, "output")
    assert_close(s, s_ref, tol, "final state")
    for name in g_ref:
        assert g[name].dtype == inputs[name].dtype, name
        assert_close(g[name].float(), g_ref[name].float(), tol, f"grad {name}")


CASES = [(1, "none"), (37, "none"), (100, "none"), (1, "head"), (37, "head"), (130, "head"), (1, "channel"),
         (37, "channel")]
SCHEDULES = ["sequential", "chunk_parallel"]
# Every case and form in both schedules; the chunk-parallel one takes two of the four bonus × initial-state
# combinations, which between them exercise each (the interpreter's time is the limit).
LR_PARAMS = [(T, decay, bonus, init, schedule) for schedule in SCHEDULES for T, decay in CASES
             for bonus, init in ([(False, False), (False, True), (True, False), (True, True)]
                                 if schedule == "sequential" else [(False, True), (True, False)])]


@pytest.mark.parametrize("T,decay,bonus,init,schedule", LR_PARAMS, ids=[
    f"B2-T{T}-H2-K24-V20-{d}-{'bonus' if b else 'nobonus'}-{'init' if i else 's0'}-{s}" for T, d, b, i, s in LR_PARAMS])
def test_triton_linear_recurrence_matches_naive(T, decay, bonus, init, schedule):
    _compare(linear_recurrence, _inputs(2, T, 2, 24, 20, decay, bonus, init), "triton", 2e-4, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_triton_linear_recurrence_exact_for_strong_per_channel_decay(bonus, schedule):
    """RWKV-6's decays reach −20 per step: still exact (no exp of a positive number anywhere)."""
    inputs = _inputs(1, 40, 1, 16, 16, "channel", bonus, True, strong=True)
    assert inputs["log_decay"].min() < -20
    _compare(linear_recurrence, inputs, "triton", 2e-4, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_triton_linear_recurrence_value_tiles_and_wide_keys(schedule):
    """V > one value tile (partial dq/dk summed over tiles) and K not a power of two."""
    _compare(linear_recurrence, _inputs(1, 70, 1, 40, 72, "head", False, True), "triton", 2e-4, schedule=schedule)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_triton_linear_recurrence_bf16_inputs(schedule):
    """16-bit inputs multiply in bf16 with fp32 accumulation and an fp32 state: close to the fp32 loop."""
    inputs = _inputs(1, 50, 2, 16, 16, "head", False, True, dtype=torch.bfloat16)
    _compare(linear_recurrence, inputs, "triton", 5e-2, schedule=schedule)


def test_triton_schedule_auto_goes_chunk_parallel_only_when_programs_cannot_fill_the_device(monkeypatch):
    from kernels.linear_recurrence import triton as lr_triton

    monkeypatch.setattr(lr_triton, "_multiprocessors", lambda device: 132)
    cuda_device, few, many = torch.device("cuda"), 2 * 132 - 1, 2 * 132
    assert lr_triton.pick_schedule("auto", cuda_device, few) == "chunk_parallel"
    assert lr_triton.pick_schedule("auto", cuda_device, many) == "sequential"
    assert lr_triton.pick_schedule("auto", torch.device("cpu"), few) == "sequential"  # the interpreter: explicit only
    assert lr_triton.pick_schedule("sequential", cuda_device, few) == "sequential"
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_triton.pick_schedule("parallel", cuda_device, few)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_triton_linear_recurrence_runs_the_schedule_it_is_given(monkeypatch, schedule):
    from kernels.linear_recurrence import triton as lr_triton

    calls = []

    def recorded(name):
        real = getattr(lr_triton, name)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return call

    for name in ("chunk_states", "chunk_outputs", "chunk_gradients"):
        monkeypatch.setattr(lr_triton, name, recorded(name))
    inputs = _inputs(1, 20, 1, 16, 16, "head", False, True)
    _run(_call(linear_recurrence, "triton", schedule=schedule), inputs)
    expected = ["chunk_states", "chunk_outputs", "chunk_states", "chunk_states", "chunk_gradients"]
    assert calls == (expected if schedule == "chunk_parallel" else [])


# Reading a tensor's value on the host waits for the device: none of these may run on the Triton paths.
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def no_host_reads(monkeypatch):
    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}() read a tensor's value on the host (a CUDA synchronisation)")
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse(name))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("decay", ["head", "channel"])
def test_triton_linear_recurrence_reads_no_tensor_value_on_the_host(decay, schedule, request):
    inputs = _inputs(1, 20, 1, 16, 16, decay, True, True)
    request.getfixturevalue("no_host_reads")
    with pytest.raises(AssertionError, match="read a tensor's value"):  # the guard is armed
        torch.ones(1).item()
    o, state = BACKENDS["triton"](**inputs, output_final_state=True, schedule=schedule)
    (o.sum() + state.sum()).backward()


@cuda
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_triton_linear_recurrence_never_synchronises_on_cuda(schedule):
    inputs = _inputs(2, 100, 2, 32, 32, "channel", True, True)
    BACKENDS["triton"](**inputs, schedule=schedule)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        o, state = BACKENDS["triton"](**inputs, output_final_state=True, schedule=schedule)
        (o.sum() + state.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_triton_linear_recurrence_rejects_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 1, 16)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            linear_recurrence(q, q, q, backend="triton")


@cuda
def test_triton_is_auto_backend_on_cuda():
    from kernels._backend import pick_backend
    from kernels.delta_rule import BACKENDS as DELTA_BACKENDS

    assert pick_backend("auto", BACKENDS, torch.device("cuda"), "linear_recurrence") is BACKENDS["triton"]
    assert pick_backend("auto", DELTA_BACKENDS, torch.device("cuda"), "delta_rule") is DELTA_BACKENDS["triton"]


def _delta_inputs(B, T, H, K, V, decay, init, strong=False, dtype=torch.float32):
    torch.manual_seed(T * 7 + K)
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    gated = F.logsigmoid(torch.randn(B, T, H) + 2)
    log_decay = {"nodecay": None, "gated": gated,  # strong: one step in five forgets by e^−20 to e^−40
                 "strong": torch.where(torch.rand(B, T, H) < 0.2, -20 * (1 + torch.rand(B, T, H)), gated)}[decay]
    inputs = dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), beta=torch.rand(B, T, H).to(dtype), log_decay=log_decay,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {n: t.to(DEVICE).requires_grad_() if t is not None else None for n, t in inputs.items()}


DELTA_CASES = [(1, "gated", True), (37, "nodecay", True), (37, "gated", False), (100, "nodecay", False),
               (130, "gated", True), (130, "nodecay", True)]


@pytest.mark.parametrize("T,decay,init", DELTA_CASES,
                         ids=[f"B2-T{T}-H2-K24-V20-{d}-{'init' if i else 's0'}" for T, d, i in DELTA_CASES])
def test_triton_delta_rule_matches_naive(T, decay, init):
    """Outputs, final state and the gradients of q, k, v, β, the decay and the initial state; T = 130 spans three
    chunks, so states are handed on twice each way."""
    _compare(delta_rule, _delta_inputs(2, T, 2, 24, 20, decay, init), "triton", 2e-4)


def test_triton_delta_rule_exact_for_strong_decay():
    """Per-step decays beyond −20 (e^−20 ≈ 2e−9 per token) among mild ones: every exponent is a chunk-local
    difference ≤ 0, so nothing overflows and what underflows is negligible."""
    inputs = _delta_inputs(1, 100, 1, 16, 16, "strong", True)
    assert inputs["log_decay"].min() < -20
    _compare(delta_rule, inputs, "triton", 2e-4)


def test_triton_delta_rule_value_tiles_and_wide_keys():
    """V over two value tiles (the WY backward sums dw over them) and K not a power of two."""
    _compare(delta_rule, _delta_inputs(1, 70, 1, 40, 72, "gated", True), "triton", 2e-4)


def test_triton_delta_rule_bf16_inputs():
    """bf16 q, k, v, β with fp32 accumulation and an fp32 state: close to the fp32 loop on the same values."""
    _compare(delta_rule, _delta_inputs(1, 50, 2, 16, 16, "gated", True, dtype=torch.bfloat16), "triton", 5e-2)


def test_triton_delta_rule_reads_no_tensor_value_on_the_host(request):
    inputs = _delta_inputs(1, 20, 1, 16, 16, "gated", True)
    request.getfixturevalue("no_host_reads")
    o, state = delta_rule(**inputs, output_final_state=True, backend="triton")
    (o.sum() + state.sum()).backward()


@cuda
def test_triton_delta_rule_never_synchronises_on_cuda():
    inputs = _delta_inputs(2, 100, 2, 64, 64, "gated", True)
    delta_rule(**inputs, backend="triton")  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        o, state = delta_rule(**inputs, output_final_state=True, backend="triton")
        (o.sum() + state.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_triton_delta_rule_rejects_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 1, 16)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            delta_rule(q, q, q, torch.rand(1, 4, 1), backend="triton")


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
