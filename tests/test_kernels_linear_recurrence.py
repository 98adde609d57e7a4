"""linear_recurrence: the chunked form and the mixer matrix equal the fp32 loop, outputs and gradients."""
import pytest
import torch

from kernels import linear_recurrence
from tests.helpers import assert_close
from tests.kernel_cases import LENGTHS, B, H, K, compare, lr_inputs, run_with_grads


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("T", LENGTHS, ids=[f"B{B}-T{t}-H{H}-K{K}" for t in LENGTHS])
def test_linear_recurrence_chunk_matches_naive(T, decay, bonus, init):
    compare(linear_recurrence, lr_inputs(T, decay, bonus, init), "chunk")


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_chunk_form_without_decay_equals_a_zero_decay_exactly(bonus, init):
    """No decay skips the factors a decay forms (all exp(0) = 1 then) and carries a plain sum: the same values bit
    for bit as the decayed form given zeros, outputs, final state and every gradient."""
    torch.manual_seed(0)
    inputs = lr_inputs(200, "none", bonus, init)
    with_zeros = {**inputs, "log_decay": torch.zeros(inputs["q"].shape[:3], requires_grad=False)}
    o, s, g = run_with_grads(linear_recurrence, inputs, backend="chunk")
    o_zero, s_zero, g_zero = run_with_grads(linear_recurrence, with_zeros, backend="chunk")
    assert torch.equal(o, o_zero) and torch.equal(s, s_zero)
    assert g.keys() == g_zero.keys() and all(torch.equal(g[name], g_zero[name]) for name in g)


@pytest.mark.parametrize("decay", ["head", "channel"])
def test_a_fixed_decay_gets_no_gradient_and_the_others_still_match_naive(decay):
    """RetNet's decay is a constant: the carry's backward skips its gradient, and q, k, v, state keep theirs."""
    inputs = lr_inputs(70, decay, False, True)
    inputs["log_decay"] = inputs["log_decay"].detach()
    compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("T", [1, 2, 9])
def test_linear_recurrence_step_matches_naive(T, decay, bonus, init):
    compare(linear_recurrence, lr_inputs(T, decay, bonus, init), "step", tol=1e-5)


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_linear_recurrence_chunk_exact_for_strong_decay(bonus):
    inputs = lr_inputs(200, "channel", bonus, True, strong=True)
    assert inputs["log_decay"].min() < -20
    compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("backend", ["naive", "step", "chunk"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_linear_recurrence_split_in_two_calls(backend, decay):
    inputs = {n: t.detach() if t is not None else None for n, t in lr_inputs(150, decay, True, True).items()}
    full, full_state = linear_recurrence(**inputs, output_final_state=True, backend=backend)
    cut = 77
    first = {n: (t[:, :cut] if n in ("q", "k", "v", "log_decay") and t is not None else t) for n, t in inputs.items()}
    second = {n: (t[:, cut:] if n in ("q", "k", "v", "log_decay") and t is not None else t) for n, t in inputs.items()}
    o1, s1 = linear_recurrence(**first, output_final_state=True, backend=backend)
    second["initial_state"] = s1
    o2, s2 = linear_recurrence(**second, output_final_state=True, backend=backend)
    assert_close(torch.cat([o1, o2], dim=1), full, 1e-4, "split output")
    assert_close(s2, full_state, 1e-4, "split state")


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_linear_recurrence_matrix_times_v_equals_output(decay, bonus):
    from kernels import linear_recurrence_matrix

    inputs = {n: t.detach() if t is not None else None for n, t in lr_inputs(100, decay, bonus, False).items()}
    o, _ = linear_recurrence(**inputs, backend="naive")
    M = linear_recurrence_matrix(inputs["q"], inputs["k"], inputs["log_decay"], inputs["bonus"], row_block=17)
    assert M.shape == (B, H, 100, 100)
    assert_close(torch.einsum("bhts,bshv->bthv", M, inputs["v"]), o, 1e-4, "M @ v")


@pytest.mark.parametrize("backend", ["step", "chunk"])
def test_recurrences_keep_fp32_under_bf16_autocast(backend):
    """Autocast on (as `--dtype auto` trains): the forms' products stay fp32, so outputs equal those without it."""
    from kernels import delta_rule

    inputs = {n: t.detach() if t is not None else None for n, t in lr_inputs(70, "head", False, True).items()}
    beta = torch.rand(inputs["q"].shape[:3], generator=torch.Generator().manual_seed(0))
    k_unit = torch.nn.functional.normalize(inputs["k"], dim=-1)
    plain = (linear_recurrence(**inputs, output_final_state=True, backend=backend),
             delta_rule(inputs["q"], k_unit, inputs["v"], beta, inputs["log_decay"], initial_state=inputs["initial_state"],
                        output_final_state=True, backend=backend))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = (linear_recurrence(**inputs, output_final_state=True, backend=backend),
                    delta_rule(inputs["q"], k_unit, inputs["v"], beta, inputs["log_decay"],
                               initial_state=inputs["initial_state"], output_final_state=True, backend=backend))
    for (o, state), (o_ac, state_ac) in zip(plain, autocast):
        assert o_ac.dtype == torch.float32 and state_ac.dtype == torch.float32
        torch.testing.assert_close(o_ac, o, rtol=0, atol=0)
        torch.testing.assert_close(state_ac, state, rtol=0, atol=0)


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
def test_chunk_form_rounds_the_gradients_of_16_bit_queries_and_keys_once(bonus):
    """bf16 q and k are widened once, so the gradients of all their uses (scores, state, RWKV's bonus) add up in
    fp32 and are rounded to bf16 once: exactly the fp32 gradient of the same values, rounded."""
    inputs = {n: t.detach() if t is not None else None for n, t in lr_inputs(70, "channel", bonus, True).items()}
    narrow = {n: inputs[n].to(torch.bfloat16).requires_grad_() for n in ("q", "k")}
    wide = {n: t.detach().float().requires_grad_() for n, t in narrow.items()}
    rest = {n: t for n, t in inputs.items() if n not in ("q", "k")}
    upstream = torch.randn(inputs["v"].shape, generator=torch.Generator().manual_seed(3))
    for leaves in (narrow, wide):
        o, _ = linear_recurrence(**leaves, **rest, backend="chunk")
        (o.float() * upstream).sum().backward()
    for name in ("q", "k"):
        assert torch.equal(narrow[name].grad, wide[name].grad.to(torch.bfloat16)), name


def test_the_bonus_row_dot_gives_einsums_values_and_gradients_bit_for_bit():
    """RWKV's bonus diagonal q_t·(u ⊙ k_t) takes einsum's batched product forward and elementwise products
    backward; einsum's backward contracts a dimension of 1 there, so the two agree exactly, on an odd shape."""
    from kernels.linear_recurrence.chunk import _RowDot

    gen = torch.Generator().manual_seed(5)
    a, b = (torch.randn(2, 37, 3, 24, generator=gen, dtype=torch.float64).float() for _ in range(2))
    upstream = torch.randn(2, 37, 3, generator=gen)
    grads = []
    for dot in (lambda x, y: torch.einsum("bthk,bthk->bth", x, y), _RowDot.apply):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = dot(x, y)
        (out * upstream).sum().backward()
        grads.append((out.detach(), x.grad, y.grad))
    for name, reference, ours in zip(("output", "grad a", "grad b"), *grads):
        assert torch.equal(reference, ours), name
