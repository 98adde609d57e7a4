"""What both chunk forms share: the forms each chunk takes under the denormal policy (all equal to the loop),
the input dtype kept, clear errors, the default scale; and the NaN-poisoned torch.empty the tests rely on."""
import pytest
import torch

from kernels import delta_rule, linear_recurrence
from tests.helpers import assert_close
from tests.kernel_cases import B, H, K, compare, delta_inputs, lr_inputs, run_with_grads


def test_torch_empty_is_poisoned():
    assert torch.isnan(torch.empty(4)).all()


def test_scale_defaults_to_inverse_sqrt_k():
    inputs = {n: t.detach() if t is not None else None for n, t in lr_inputs(20, "head", False, False).items()}
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
@pytest.mark.parametrize("T", [63, 257])
def test_mild_per_channel_decay_takes_the_factored_form_and_matches_naive(T, bonus):
    from kernels.linear_recurrence.chunk import chunk_forms

    inputs = lr_inputs(T, "channel", bonus, True)
    with torch.no_grad():  # ≤ 0.12 per step: a 64-token chunk spans ≤ 7.7, far inside FACTOR_RANGE
        inputs["log_decay"].copy_(-(0.02 + 0.1 * torch.rand(B, T, H, K)))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": 64, "factored_chunks": 1.0}
    compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("bonus", [False, True], ids=["nobonus", "bonus"])
@pytest.mark.parametrize("per_head", [False, True], ids=["channel", "head"])
def test_each_chunk_takes_its_own_form_and_all_match_naive(bonus, per_head):
    from kernels.linear_recurrence.chunk import chunk_forms

    T = 257  # chunks 0, 3, 4 factored (span ~32); 1 spans ~192 (factored halves); 2 has one 8-token block
    # spanning 240
    inputs = lr_inputs(T, "head" if per_head else "channel", bonus, True)
    steps = torch.full((T,), 0.5)
    steps[64:128] = 3.0
    steps[136:144] = 30.0
    with torch.no_grad():
        jitter = 0.9 + 0.2 * torch.rand_like(inputs["log_decay"])
        inputs["log_decay"].copy_(-steps.view(1, T, 1, *([] if per_head else [1])) * jitter)
    forms = chunk_forms(inputs["log_decay"])
    assert forms["factored_chunks"] == pytest.approx(3 / 5)
    if not per_head:
        # chunk 1 factors in two 32-token halves; chunk 2 in 32 + 16 + 8 tokens and 8 pairwise: of 128 tokens
        assert forms == pytest.approx({"chunk": 64, "factored_chunks": 3 / 5, "factored_32": 96 / 128,
                                       "factored_16": 16 / 128, "factored_8": 8 / 128, "pairwise": 8 / 128})
    compare(linear_recurrence, inputs, "chunk")


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
    strong = lr_inputs(256, "channel", False, False, strong=True)["log_decay"]
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
    inputs = lr_inputs(T, "head" if per_head else "channel", bonus, True)
    span = (DENORMAL_SAFE_SPAN + FACTOR_RANGE) / 2  # ~102 per 64 tokens: halves span ~51
    with torch.no_grad():
        inputs["log_decay"].copy_(-(span / CHUNK) * (0.95 + 0.1 * torch.rand_like(inputs["log_decay"])))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": CHUNK // 2, "factored_chunks": 1.0}
    compare(linear_recurrence, inputs, "chunk")
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
    inputs = lr_inputs(T, "channel", bonus, True)
    with torch.no_grad():
        inputs["log_decay"].copy_(-0.05 * torch.rand(B, T, H, K))
        inputs["log_decay"][:, 3 * CHUNK:4 * CHUNK] = -(FACTOR_RANGE / CHUNK) * (0.97 + 0.02 * torch.rand(B, CHUNK, H, K))
    assert chunk_forms(inputs["log_decay"]) == {"chunk": CHUNK, "factored_chunks": 1.0}
    compare(linear_recurrence, inputs, "chunk")


@pytest.mark.parametrize("op", ["linear_recurrence", "delta_rule"])
def test_chunk_returns_the_input_dtype_and_bf16_gradients(op):
    """bf16 q/k/v: the chunk form computes in fp32 and casts on the way out (a fused pass); the gradients come
    back in bf16 and match the fp32 loop's on the same rounded values to bf16 precision."""
    fn = linear_recurrence if op == "linear_recurrence" else delta_rule
    inputs = lr_inputs(100, "channel", True, True) if fn is linear_recurrence else delta_inputs(100, True, True)
    low = {n: t.detach().to(torch.bfloat16).requires_grad_() if n in ("q", "k", "v") else t
           for n, t in inputs.items()}
    exact = {n: t.detach().float().requires_grad_() if n in ("q", "k", "v") else t for n, t in low.items()}
    o, state, grads = run_with_grads(fn, low, backend="chunk")
    o_ref, state_ref, grads_ref = run_with_grads(fn, exact, backend="naive")
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert_close(o.float(), o_ref, 1e-2, "output")
    assert_close(state, state_ref, 1e-4, "final state")
    for name in ("q", "k", "v"):
        assert grads[name].dtype == torch.bfloat16
        assert_close(grads[name].float(), grads_ref[name], 2e-2, f"grad {name}")
