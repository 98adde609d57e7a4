"""Every kernel backend equals the fp32 loop (`naive`) in outputs and in gradients of every input."""
import pytest
import torch
import torch.nn.functional as F

from kernels import delta_rule, linear_recurrence
from tests.helpers import assert_close

B, H, K, V = 2, 2, 12, 10
LENGTHS = [1, 63, 100, 257]


def test_torch_empty_is_poisoned():
    assert torch.isnan(torch.empty(4)).all()


def _lr_inputs(T, decay, bonus, init, strong=False):
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    if decay == "none":
        log_decay = None
    elif decay == "head":
        log_decay = F.logsigmoid(torch.randn(B, T, H) + 2)
    else:
        # RWKV-6 style w = −exp(·): strong decays reach −20 per step and more.
        log_decay = -torch.exp(torch.randn(B, T, H, K) * (1.5 if strong else 1.0))
    inputs = dict(q=q, k=k, v=v, log_decay=log_decay,
                  bonus=torch.randn(H, K) if bonus else None,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}


def _run_with_grads(fn, inputs, **kwargs):
    o, state = fn(**inputs, output_final_state=True, **kwargs)
    torch.manual_seed(1)
    loss = (o * torch.randn(o.shape)).sum() + (state * torch.randn(state.shape)).sum()
    tensors = {n: t for n, t in inputs.items() if t is not None and t.requires_grad}
    grads = torch.autograd.grad(loss, list(tensors.values()))
    return o, state, dict(zip(tensors, grads))


def _compare(fn, inputs, backend, tol=2e-4):
    o_ref, s_ref, g_ref = _run_with_grads(fn, inputs, backend="naive")
    o, s, g = _run_with_grads(fn, inputs, backend=backend)
    assert_close(o, o_ref, tol, "output")
    assert_close(s, s_ref, tol, "final state")
    for name in g_ref:
        assert_close(g[name], g_ref[name], tol, f"grad {name}")


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("T", LENGTHS, ids=[f"B{B}-T{t}-H{H}-K{K}" for t in LENGTHS])
def test_linear_recurrence_chunk_matches_naive(T, decay, bonus, init):
    _compare(linear_recurrence, _lr_inputs(T, decay, bonus, init), "chunk")


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_linear_recurrence_chunk_exact_for_strong_decay(bonus):
    inputs = _lr_inputs(200, "channel", bonus, True, strong=True)
    assert inputs["log_decay"].min() < -20
    _compare(linear_recurrence, inputs, "chunk")


def _delta_inputs(T, decay, init):
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    inputs = dict(q=q, k=k, v=v, beta=torch.rand(B, T, H),
                  log_decay=F.logsigmoid(torch.randn(B, T, H) + 2) if decay else None,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
@pytest.mark.parametrize("T", LENGTHS, ids=[f"B{B}-T{t}-H{H}-K{K}" for t in LENGTHS])
def test_delta_rule_chunk_matches_naive(T, decay, init):
    _compare(delta_rule, _delta_inputs(T, decay, init), "chunk")


@pytest.mark.parametrize("per_step", [1.5, 7.0], ids=["halved", "pairwise"])
def test_delta_rule_chunk_exact_for_strong_decay(per_step):
    """~1.5 per step: 64-token chunks span ~96, so the call runs at 32-token chunks (factored); ~7 per step:
    even 16-token chunks span beyond the policy's safe span, so the ratios are taken pairwise."""
    from kernels.chunking import CHUNK, DENORMALS

    inputs = _delta_inputs(200, True, True)
    with torch.no_grad():
        inputs["log_decay"].copy_(-per_step * (0.8 + 0.4 * torch.rand(B, 200, H)))
    span = lambda length: -inputs["log_decay"][:, :length].sum(1)
    if per_step > 5:
        assert (span(DENORMALS.delta_min_chunk) > DENORMALS.safe_span).all()
    else:
        assert (span(CHUNK) > DENORMALS.delta_halve_span).all() and (span(CHUNK // 2) < DENORMALS.delta_halve_span).all()
    _compare(delta_rule, inputs, "chunk")


@pytest.mark.parametrize("backend", ["naive", "chunk"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_linear_recurrence_split_in_two_calls(backend, decay):
    inputs = {n: t.detach() if t is not None else None for n, t in _lr_inputs(150, decay, True, True).items()}
    full, full_state = linear_recurrence(**inputs, output_final_state=True, backend=backend)
    cut = 77
    first = {n: (t[:, :cut] if n in ("q", "k", "v", "log_decay") and t is not None else t) for n, t in inputs.items()}
    second = {n: (t[:, cut:] if n in ("q", "k", "v", "log_decay") and t is not None else t) for n, t in inputs.items()}
    o1, s1 = linear_recurrence(**first, output_final_state=True, backend=backend)
    second["initial_state"] = s1
    o2, s2 = linear_recurrence(**second, output_final_state=True, backend=backend)
    assert_close(torch.cat([o1, o2], dim=1), full, 1e-4, "split output")
    assert_close(s2, full_state, 1e-4, "split state")


@pytest.mark.parametrize("backend", ["naive", "chunk"])
def test_delta_rule_split_in_two_calls(backend):
    inputs = {n: t.detach() if t is not None else None for n, t in _delta_inputs(150, True, True).items()}
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


def test_scale_defaults_to_inverse_sqrt_k():
    inputs = {n: t.detach() if t is not None else None for n, t in _lr_inputs(20, "head", False, False).items()}
    default, _ = linear_recurrence(**inputs)
    explicit, _ = linear_recurrence(**inputs, scale=K ** -0.5)
    doubled, _ = linear_recurrence(**inputs, scale=2 * K ** -0.5)
    assert torch.equal(default, explicit)
    assert_close(doubled, 2 * default, 1e-6)


def test_bad_shapes_and_backends_raise_clear_errors():
    q = torch.randn(1, 5, 2, 4)
    with pytest.raises(ValueError, match="unknown backend 'cuda_magic'"):
        linear_recurrence(q, q, q, backend="cuda_magic")
    with pytest.raises(ValueError, match="log_decay must be"):
        linear_recurrence(q, q, q, log_decay=torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match="beta must be"):
        delta_rule(q, q, q, beta=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="expected q, k of shape"):
        linear_recurrence(q[0], q, q)


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_linear_recurrence_matrix_times_v_equals_output(decay, bonus):
    from kernels import linear_recurrence_matrix

    inputs = {n: t.detach() if t is not None else None for n, t in _lr_inputs(100, decay, bonus, False).items()}
    o, _ = linear_recurrence(**inputs, backend="naive")
    M = linear_recurrence_matrix(inputs["q"], inputs["k"], inputs["log_decay"], inputs["bonus"], row_block=17)
    assert M.shape == (B, H, 100, 100)
    assert_close(torch.einsum("bhts,bshv->bthv", M, inputs["v"]), o, 1e-4, "M @ v")


@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
def test_delta_rule_matrix_times_v_equals_output(decay):
    from kernels import delta_rule_matrix

    inputs = {n: t.detach() if t is not None else None for n, t in _delta_inputs(100, decay, False).items()}
    o, _ = delta_rule(**inputs, backend="naive")
    M = delta_rule_matrix(inputs["q"], inputs["k"], inputs["beta"], inputs["log_decay"])
    assert_close(torch.einsum("bhts,bshv->bthv", M, inputs["v"]), o, 1e-4, "M @ v")


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("T", [63, 257])
def test_mild_per_channel_decay_takes_the_factored_form_and_matches_naive(T, bonus):
    from kernels.linear_recurrence.chunk import chunk_forms

    inputs = _lr_inputs(T, "channel", bonus, True)
    with torch.no_grad():  # ≤ 0.12 per step: a 64-token chunk spans ≤ 7.7, far inside FACTOR_RANGE
        inputs["log_decay"].copy_(-(0.02 + 0.1 * torch.rand(B, T, H, K)))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": 64, "factored_chunks": 1.0}
    _compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("per_head", [False, True], ids=["channel", "head"])
def test_each_chunk_takes_its_own_form_and_all_match_naive(bonus, per_head):
    from kernels.linear_recurrence.chunk import chunk_forms

    T = 257  # chunks 0, 3, 4 factored (span ~32); 1 spans ~192 (factored halves); 2 has one 8-token block
    # spanning 240
    inputs = _lr_inputs(T, "head" if per_head else "channel", bonus, True)
    steps = torch.full((T,), 0.5)
    steps[64:128] = 3.0
    steps[136:144] = 30.0
    with torch.no_grad():
        inputs["log_decay"].copy_(-steps.view(1, T, 1, *([] if per_head else [1])) * (0.9 + 0.2 * torch.rand_like(inputs["log_decay"])))
    forms = chunk_forms(inputs["log_decay"])
    assert forms["factored_chunks"] == pytest.approx(3 / 5)
    if not per_head:
        # chunk 1 factors in two 32-token halves; chunk 2 in 32 + 16 + 8 tokens and 8 pairwise: of 128 tokens
        assert forms == pytest.approx({"chunk": 64, "factored_chunks": 3 / 5, "factored_32": 96 / 128,
                                       "factored_16": 16 / 128, "factored_8": 8 / 128, "pairwise": 8 / 128})
    _compare(linear_recurrence, inputs, "chunk")


def test_the_factored_form_ends_at_factor_range():
    from kernels.chunking import CHUNK, DENORMALS
    from kernels.linear_recurrence.chunk import chunk_forms
    FACTOR_RANGE = DENORMALS.factor_range

    def one_chunk_spanning(factor):  # 16 chunks of mild decay, chunk 5 spanning factor × FACTOR_RANGE
        log_decay = torch.full((1, 16 * CHUNK, 1, 3), -0.1)
        log_decay[:, 5 * CHUNK:6 * CHUNK] = -FACTOR_RANGE / CHUNK * factor
        return log_decay

    assert chunk_forms(one_chunk_spanning(0.999)) == {"chunk": CHUNK, "factored_chunks": 1.0}
    assert chunk_forms(one_chunk_spanning(1.001)) == {"chunk": CHUNK, "factored_chunks": 15 / 16, "factored_32": 1.0,
                                                      "pairwise": 0.0}
    strong = _lr_inputs(256, "channel", False, False, strong=True)["log_decay"]
    assert chunk_forms(strong)["factored_chunks"] < 0.5  # RWKV-6's strong decays keep the stable form


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("per_head", [False, True], ids=["channel", "head"])
def test_denormal_prone_spans_run_at_half_the_chunk_size_and_match_naive(bonus, per_head):
    """Chunks spanning 84–120 could be factored, but a product of two factors can then be denormal (the matmul
    slows down ~100× per such operand): when many chunks do, the call runs at half the chunk size instead,
    unless the halves would span too much as well."""
    from kernels.chunking import CHUNK, DENORMALS
    from kernels.linear_recurrence.chunk import chunk_forms
    DENORMAL_SAFE_SPAN, FACTOR_RANGE = DENORMALS.safe_span, DENORMALS.factor_range

    T = 257
    inputs = _lr_inputs(T, "head" if per_head else "channel", bonus, True)
    span = (DENORMAL_SAFE_SPAN + FACTOR_RANGE) / 2  # ~102 per 64 tokens: halves span ~51
    with torch.no_grad():
        inputs["log_decay"].copy_(-(span / CHUNK) * (0.95 + 0.1 * torch.rand_like(inputs["log_decay"])))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": CHUNK // 2, "factored_chunks": 1.0}
    _compare(linear_recurrence, inputs, "chunk")
    too_wide = inputs["log_decay"].detach() * 2  # halves would span ~102 too: stays at CHUNK, the stable form
    assert chunk_forms(too_wide)["chunk"] == CHUNK


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_chunks_spanning_almost_factor_range_carry_their_state_exactly(bonus):
    from kernels.chunking import CHUNK, DENORMALS
    from kernels.linear_recurrence.chunk import chunk_forms
    FACTOR_RANGE = DENORMALS.factor_range

    # Chunk 3 of 13 is factored at the edge of the range: its state update is scaled up to exp(+range/2) and
    # its weight down to exp(−range); an underflow there would drop O(1) contributions across the border into
    # chunk 4. The other chunks decay mildly (one edge chunk in 13 keeps the full chunk size).
    T = 12 * CHUNK + 5
    inputs = _lr_inputs(T, "channel", bonus, True)
    with torch.no_grad():
        inputs["log_decay"].copy_(-0.05 * torch.rand(B, T, H, K))
        inputs["log_decay"][:, 3 * CHUNK:4 * CHUNK] = -(FACTOR_RANGE / CHUNK) * (0.97 + 0.02 * torch.rand(B, CHUNK, H, K))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": CHUNK, "factored_chunks": 1.0}
    _compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("op", ["linear_recurrence", "delta_rule"])
def test_chunk_returns_the_input_dtype_and_bf16_gradients(op):
    """bf16 q/k/v: the chunk form computes in fp32 and casts on the way out (a fused pass); the gradients come
    back in bf16 and match the fp32 loop's on the same rounded values to bf16 precision."""
    fn = linear_recurrence if op == "linear_recurrence" else delta_rule
    inputs = _lr_inputs(100, "channel", True, True) if fn is linear_recurrence else _delta_inputs(100, True, True)
    low = {n: t.detach().to(torch.bfloat16).requires_grad_() if n in ("q", "k", "v") else t
           for n, t in inputs.items()}
    exact = {n: t.detach().float().requires_grad_() if n in ("q", "k", "v") else t for n, t in low.items()}
    o, state, grads = _run_with_grads(fn, low, backend="chunk")
    o_ref, state_ref, grads_ref = _run_with_grads(fn, exact, backend="naive")
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert_close(o.float(), o_ref, 1e-2, "output")
    assert_close(state, state_ref, 1e-4, "final state")
    for name in ("q", "k", "v"):
        assert grads[name].dtype == torch.bfloat16
        assert_close(grads[name].float(), grads_ref[name], 2e-2, f"grad {name}")
