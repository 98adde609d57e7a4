"""linear_recurrence: the chunked form and the mixer matrix equal the fp32 loop, outputs and gradients."""
import pytest
import torch

from kernels import linear_recurrence
from tests.helpers import assert_close
from tests.kernel_cases import LENGTHS, B, H, K, compare, lr_inputs


@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("T", LENGTHS, ids=[f"B{B}-T{t}-H{H}-K{K}" for t in LENGTHS])
def test_linear_recurrence_chunk_matches_naive(T, decay, bonus, init):
    compare(linear_recurrence, lr_inputs(T, decay, bonus, init), "chunk")


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
