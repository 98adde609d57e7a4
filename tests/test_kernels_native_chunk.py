"""kernels.native's prompt pass through the gated delta rule (`delta_rule(backend="native")`) against the fp32 loop
on odd shapes (partial chunks, K ≠ V), with and without decay and initial state, decays strong enough to be
dropped, strided and bf16 inputs; when a call takes it (no gradient to record) and when `chunk` runs instead; a
whole gated_deltanet model giving the same logits either way. Skipped where the extension cannot be built."""
import pytest
import torch
import torch.nn.functional as F

from kernels import delta_rule, native
from kernels.delta_rule import native as delta_native

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
B, H, K, V = 2, 3, 5, 7


def _inputs(T, decay=True, init=True, per_step=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(q=torch.randn(B, T, H, K, generator=g), k=F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
                  v=torch.randn(B, T, H, V, generator=g), beta=torch.rand(B, T, H, generator=g),
                  log_decay=F.logsigmoid(torch.randn(B, T, H, generator=g) + 2) if decay else None,
                  initial_state=torch.randn(B, H, K, V, generator=g) if init else None)
    if per_step is not None:
        inputs["log_decay"] = -per_step * (0.8 + 0.4 * torch.rand(B, T, H, generator=g))
    return inputs


def _reference(inputs):
    double = {name: t.double() if t is not None else None for name, t in inputs.items()}
    return delta_rule(**double, output_final_state=True, backend="naive")


def _check(inputs, tol=1e-5):
    with torch.no_grad():
        o, state = delta_rule(**inputs, output_final_state=True, backend="native")
    o_ref, state_ref = _reference(inputs)
    assert o.dtype == inputs["v"].dtype and state.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(state.double(), state_ref.double(), rtol=tol, atol=tol)


@needs_build
@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
@pytest.mark.parametrize("T", [1, 63, 64, 100, 257])
def test_the_compiled_pass_matches_the_loop(T, decay, init):
    _check(_inputs(T, decay, init))


@needs_build
@pytest.mark.parametrize("per_step", [1.5, 7.0])
def test_the_compiled_pass_is_exact_for_strong_decay(per_step):
    """Chunks spanning e^-96 and e^-450: the Python form halves or pairs them; here every ratio is pairwise
    already, and the ones below the floor are dropped without changing the result."""
    _check(_inputs(200, per_step=per_step))


@needs_build
def test_the_compiled_pass_reads_strided_and_bf16_inputs():
    inputs = _inputs(100)
    wide = torch.randn(B, 100, 2 * H, K)
    inputs["q"] = wide[:, :, :H]  # a head split of a stacked projection: strided over time
    inputs["k"] = F.normalize(wide[:, :, H:], dim=-1)
    _check(inputs)
    inputs["v"] = inputs["v"].bfloat16()  # the output follows v's dtype; the state stays fp32
    _check(inputs, tol=1e-2)


@needs_build
def test_the_compiled_pass_runs_only_without_a_gradient_to_record():
    inputs = {name: t.requires_grad_() if t is not None else None for name, t in _inputs(70).items()}
    assert not delta_native.takes(*inputs.values())
    o, _ = delta_rule(**inputs, backend="native")  # runs the chunked torch form: gradients flow
    o.sum().backward()
    assert all(t.grad is not None for t in inputs.values() if t is not None)
    with torch.no_grad():
        assert delta_native.takes(*inputs.values())
    with torch.inference_mode():
        assert delta_native.takes(*inputs.values())


@needs_build
def test_cpu_auto_resolves_to_the_compiled_pass(monkeypatch):
    calls = []
    compiled = native.module()

    class Counting:
        def delta_chunk(self, *args):
            calls.append(args[0].shape)
            return compiled.delta_chunk(*args)

    monkeypatch.setattr(native, "without_autograd", lambda *a: Counting())
    with torch.no_grad():
        delta_rule(**_inputs(20))
    assert calls == [(B, 20, H, K)]


@needs_build
def test_gated_deltanet_gives_the_same_logits_either_way(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from students.surgery import build_student

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=120,
                                           max_position_embeddings=256, tie_word_embeddings=True))
    model = build_student(teacher.eval(), "gated_deltanet", init="random", seed=0).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 150))
    with torch.inference_mode():
        compiled = model(ids).logits
        with monkeypatch.context() as m:
            m.setenv("DISTILL_BENCH_NATIVE", "0")
            assert native.module() is None
            python = model(ids).logits
    torch.testing.assert_close(compiled, python, rtol=1e-5, atol=1e-5)
