"""students.teacher_attention: a frozen teacher's attention through the compiled causal kernel inside transformers.
The teacher's logits against its sdpa ones (and that the kernel ran, once a layer); calls it does not cover going to
sdpa unchanged (a padding mask, decoding with a cache, a gradient to record); the implementation put back after the
block, also on an error; a model on another attention left alone; the stages' switch (eager where probabilities are
needed). Skipped where the extension cannot be built."""
import pytest
import torch

from bench.distill import stages
from kernels import native
from students import teacher_attention
from students.surgery import load_teacher

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_teacher(str(tiny_teacher_dir)).eval()


@pytest.fixture
def compiled_calls(monkeypatch):
    calls, compiled = [], native.module()

    class Spy:
        def __getattr__(self, name):
            return getattr(compiled, name)

        def causal_attention(self, *args):
            calls.append(args[0].shape)
            return compiled.causal_attention(*args)

    monkeypatch.setattr(native, "module", lambda: Spy())
    return calls


def _ids(teacher, B=2, T=45, seed=0):
    return torch.randint(0, teacher.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@needs_build
def test_teacher_logits_match_sdpa(teacher, compiled_calls):
    ids = _ids(teacher)
    with torch.no_grad():
        reference = teacher(input_ids=ids).logits
        with teacher_attention.compiled_attention([teacher]):
            assert teacher.config._attn_implementation == teacher_attention.NAME
            logits = teacher(input_ids=ids).logits
            all_ones = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert len(compiled_calls) == 2 * teacher.config.num_hidden_layers
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(all_ones, reference, atol=1e-4, rtol=1e-4)
    assert teacher.config._attn_implementation == "sdpa"


@needs_build
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
def test_uncovered_calls_run_sdpa_unchanged(teacher, compiled_calls):
    ids = _ids(teacher, seed=1)
    padding = torch.ones_like(ids)
    padding[0, :7] = 0
    with torch.no_grad():
        padded_reference = teacher(input_ids=ids, attention_mask=padding).logits
        prompt = teacher(input_ids=ids[:, :-1], use_cache=True)
        decoded_reference = teacher(input_ids=ids[:, -1:], past_key_values=prompt.past_key_values).logits
        with teacher_attention.compiled_attention([teacher]):
            padded = teacher(input_ids=ids, attention_mask=padding).logits
            prompt = teacher(input_ids=ids[:, :-1], use_cache=True)  # covered: one compiled call a layer
            decoded = teacher(input_ids=ids[:, -1:], past_key_values=prompt.past_key_values).logits
    assert torch.equal(padded, padded_reference)
    torch.testing.assert_close(decoded, decoded_reference, atol=1e-4, rtol=1e-4)
    assert len(compiled_calls) == teacher.config.num_hidden_layers  # the prompt's only


@needs_build
def test_a_gradient_to_record_runs_sdpa(teacher, compiled_calls):
    ids = _ids(teacher, seed=2)
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.requires_grad_(True)
    try:
        with teacher_attention.compiled_attention([teacher]):
            logits = teacher(input_ids=ids).logits
            assert logits.requires_grad and compiled_calls == []
            teacher.requires_grad_(False)  # frozen: nothing to record even with gradient mode on
            frozen = teacher(input_ids=ids).logits
        assert len(compiled_calls) == teacher.config.num_hidden_layers
        torch.testing.assert_close(frozen, logits.detach(), atol=1e-4, rtol=1e-4)
    finally:
        for p, flag in zip(teacher.parameters(), flags):
            p.requires_grad_(flag)


def test_implementation_restored_on_error_and_other_attention_left_alone(teacher):
    with pytest.raises(RuntimeError, match="inside"):
        with teacher_attention.compiled_attention([teacher]):
            raise RuntimeError("inside")
    assert teacher.config._attn_implementation == "sdpa"
    teacher.set_attn_implementation("eager")
    try:
        with teacher_attention.compiled_attention([teacher]):
            assert teacher.config._attn_implementation == "eager"
    finally:
        teacher.set_attn_implementation("sdpa")


@needs_build
def test_stages_switch_teacher_attention(teacher):
    with stages.teacher_attention([teacher], needs_weights=False):
        assert teacher.config._attn_implementation == teacher_attention.NAME
    with stages.teacher_attention([teacher], needs_weights=True):
        assert teacher.config._attn_implementation == "eager"
    assert teacher.config._attn_implementation == "sdpa"
