"""kernels.native: the compiled one-token steps against the Python steps (the same arithmetic, op by op) on odd
shapes, every decay form, the RWKV-6 bonus, bf16 and strided inputs; when a call may take them; a whole model
decoding the same tokens either way (skipped where the extension cannot be built); and a failed build, simulated:
one warning, then the Python step."""
import warnings

import pytest
import torch

from kernels import native
from kernels.delta_rule.step import delta_rule_step
from kernels.linear_recurrence.step import linear_recurrence_step

native_one_token = native.one_token

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ decode step cannot be built here")
B, H, K, V = 2, 3, 5, 7


def _python(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("DISTILL_BENCH_NATIVE", "0")
        assert native.module() is None
        return fn(*args, **kwargs)


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 1, H, K, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, 1, H, K, generator=g), dim=-1)
    v = torch.randn(B, 1, H, V, generator=g)
    state = torch.randn(B, H, K, V, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype), state, g


@needs_build
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("bonus", [False, True], ids=["plain", "bonus"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_linear_step_matches_the_python_step(monkeypatch, decay, bonus, dtype):
    q, k, v, state, g = _inputs(dtype)
    log_decay = {"none": None, "head": -torch.rand(B, 1, H, generator=g),
                 "channel": -3 * torch.rand(B, 1, H, K, generator=g)}[decay]
    u = torch.randn(H, K, generator=g) if bonus else None
    before = state.clone()
    with torch.inference_mode():
        o, final = linear_recurrence_step(q, k, v, log_decay, u, 0.3, state, True)
        o_ref, final_ref = _python(monkeypatch, linear_recurrence_step, q, k, v, log_decay, u, 0.3, state, True)
    assert o.dtype == o_ref.dtype == torch.float32 and o.shape == (B, 1, H, V)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(state, before)  # the caller's state is read, never written


@needs_build
@pytest.mark.parametrize("decay", [False, True], ids=["no-decay", "decay"])
def test_the_delta_step_matches_the_python_step_on_strided_inputs(monkeypatch, decay):
    q, k, v, state, g = _inputs()
    wide = torch.randn(B, 1, H, 2 * K, generator=g)
    q = wide[..., ::2]  # a strided view, as a split of a stacked projection gives
    beta = torch.rand(B, 1, H, generator=g)
    log_decay = -torch.rand(B, 1, H, generator=g) if decay else None
    with torch.inference_mode():
        o, final = delta_rule_step(q, k, v, beta, log_decay, None, state, True)
        o_ref, final_ref = _python(monkeypatch, delta_rule_step, q, k, v, beta, log_decay, None, state, True)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_ref, rtol=1e-5, atol=1e-5)


@needs_build
def test_only_one_token_with_a_state_and_no_gradient_takes_the_compiled_step():
    q, _, _, state, _ = _inputs()
    assert native.one_token(q, state) is native.module()
    assert native.one_token(torch.randn(B, 2, H, K), state) is None  # a prompt: the Python loop
    assert native.one_token(q, None) is None
    bonus = torch.randn(H, K, requires_grad=True)  # a parameter, as RWKV-6's bonus
    assert native.one_token(q, state, bonus) is None  # training needs the autograd ops
    with torch.no_grad():
        assert native.one_token(q, state, bonus) is native.module()  # no gradient recorded: the compiled step


@needs_build
@pytest.mark.parametrize("name, options", [("gated_deltanet", None), ("rwkv", None), ("mamba", None), ("xlstm", None),
                                           ("xlstm", {"window": 3}), ("gla", {"window": 3})],
                         ids=["gated_deltanet", "rwkv", "mamba", "xlstm", "xlstm-window", "gla-window"])
def test_a_model_decodes_the_same_tokens_with_either_step(monkeypatch, name, options):
    from transformers import LlamaConfig, LlamaForCausalLM

    from students.modeling import _CACHE_FIELD
    from students.surgery import build_student

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=120,
                                           max_position_embeddings=64, tie_word_embeddings=True))
    model = build_student(teacher.eval(), name, init="random", mixer_options=options, seed=0).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 12))

    def decode():
        with torch.inference_mode():
            cache = getattr(model(ids[:, :8], use_cache=True), _CACHE_FIELD)
            steps = [model(ids[:, i:i + 1], use_cache=True, **{_CACHE_FIELD: cache}).logits for i in range(8, 12)]
        return torch.cat(steps, dim=1)

    calls = []
    with monkeypatch.context() as m:  # count the tokens the compiled step takes
        m.setattr(native, "one_token", lambda *a: calls.append(native_one_token(*a)) or calls[-1])
        compiled = decode()
    assert len(calls) == 4 * 2 and all(c is native.module() for c in calls)  # every layer of every decoded token
    torch.testing.assert_close(compiled, _python(monkeypatch, decode), rtol=1e-5, atol=1e-5)


def test_a_failed_build_warns_once_and_decoding_runs_the_python_step(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++ not found\n(details)")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="could not be built \\(Error building extension: c\\+\\+ not found\\)"):
        assert native.module() is None
    q, k, v, state, _ = _inputs()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every token
        o, final = linear_recurrence_step(q, k, v, None, None, None, state, True)
    torch.testing.assert_close(o[:, 0], torch.einsum("bhk,bhkv->bhv", q[:, 0], final) * K ** -0.5)
