"""kernels.ddlerp: RWKV-6's token shift and decay. The compiled pass against the torch form in float64 on odd shapes
(one token, blocks of 32 rows split and partial, widths below and between vector lengths, a batch of two, with and
without the token before), extreme arguments, inputs it does not take (gradient, bf16, autocast: the torch form
runs), shape errors, and rwkv's logits either way with the low-rank weights live (zero at init). Compiled tests are
skipped where the extension cannot be built."""
import pytest
import torch

from kernels import native
from kernels.ddlerp import ddlerp

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")


def _inputs(B, T, D, rank, decay_rank, previous=True, seed=0, spread=0.1, width=None):
    width = D if width is None else width  # the decay's (heads × key dim)
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B, T, D, generator=g), previous=torch.randn(B, 1, D, generator=g) if previous else None,
                maa_x=torch.rand(D, generator=g), maa_w1=torch.randn(D, 5 * rank, generator=g) * spread,
                maa=torch.rand(5, D, generator=g), maa_w2=torch.randn(5, rank, D, generator=g) * spread,
                time_decay=torch.randn(width, generator=g) - 2, decay_w1=torch.randn(D, decay_rank, generator=g) * spread,
                decay_w2=torch.randn(decay_rank, width, generator=g) * spread)


SHAPES = [(1, 1, 256, 32, 64, 256), (2, 1, 19, 3, 5, 19), (2, 37, 40, 3, 5, 40), (1, 64, 24, 4, 8, 24),
          (2, 65, 21, 4, 6, 33), (1, 100, 256, 32, 64, 256), (1, 50, 64, 8, 16, 128),
          (1, 70, 56, 10, 12, 59), (1, 45, 72, 7, 40, 72)]
# B, T, D, R, Rd, decay width; the last two: products with 16-wide blocks and 1-wide tails, and (AVX-512) 8 x 32 tiles
# with 8-wide tiles at their column and row edges


@needs_build
@pytest.mark.parametrize("previous", [True, False], ids=["previous", "zeros"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_compiled_pass_matches_the_torch_form(shape, previous):
    inputs = _inputs(*shape[:5], previous=previous, width=shape[5])
    before = {name: t.clone() for name, t in inputs.items() if t is not None}
    with torch.no_grad():
        streams, log_decay = ddlerp(**inputs, backend="native")
    assert all(torch.equal(inputs[name], t) for name, t in before.items())  # inputs read, never written
    reference = ddlerp(**{name: t.double() if t is not None else None for name, t in inputs.items()}, backend="torch")
    fp32 = ddlerp(**inputs, backend="torch")
    B, T, D = shape[:3]
    assert streams.shape == (4, B, T, D) and log_decay.shape == (B, T, shape[5]) and streams.dtype == torch.float32
    for compiled, torch_fp32, exact in zip((streams, log_decay), fp32, reference):
        torch.testing.assert_close(compiled.double(), exact, rtol=2e-5, atol=2e-5)
        # no less exact than the torch form in fp32 (within rounding of the error itself)
        assert (compiled.double() - exact).abs().max() <= 4 * (torch_fp32.double() - exact).abs().max() + 1e-6


@needs_build
def test_extreme_arguments_give_the_torch_forms_decays():
    inputs = _inputs(2, 40, 24, 4, 8)
    inputs["maa_w1"] *= 300  # both tanh saturated
    inputs["decay_w1"] *= 300
    inputs["time_decay"] = torch.linspace(-120, 120, 24)  # exp's arguments past fp32's range either side
    with torch.no_grad():
        streams, log_decay = ddlerp(**inputs, backend="native")
        streams_torch, log_decay_torch = ddlerp(**inputs, backend="torch")
    torch.testing.assert_close(streams, streams_torch, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(streams).all() and (log_decay < 0).all()
    # what the recurrence uses, exp(log_decay), agrees even where torch's log_decay is -inf and ours -2e38
    torch.testing.assert_close(log_decay.exp(), log_decay_torch.exp(), rtol=1e-5, atol=1e-30)
    finite = log_decay_torch > -1e30
    torch.testing.assert_close(log_decay[finite], log_decay_torch[finite], rtol=1e-5, atol=1e-5)


@needs_build
def test_the_compiled_pass_reads_strided_inputs():
    inputs = _inputs(2, 33, 24, 4, 8)
    inputs["x"] = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)  # batch-strided
    with torch.no_grad():
        streams, log_decay = ddlerp(**inputs, backend="native")
    torch.testing.assert_close(streams, ddlerp(**inputs, backend="torch")[0], rtol=1e-5, atol=1e-5)


def _uses_compiled(calls: list, **inputs) -> bool:
    """Whether ddlerp on these inputs takes the compiled pass (`calls` the `compiled_calls` fixture's list)."""
    calls.clear()
    ddlerp(**inputs, backend="native")
    return calls == ["ddlerp"]


@needs_build
def test_the_compiled_pass_runs_only_where_it_can(compiled_calls):
    inputs = _inputs(1, 20, 16, 2, 4)
    with torch.no_grad():
        assert _uses_compiled(compiled_calls, **inputs)
    with torch.no_grad():
        assert not _uses_compiled(compiled_calls, **{**inputs, "x": inputs["x"].bfloat16()})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_compiled(compiled_calls, **inputs)
    trained = {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}
    assert not _uses_compiled(compiled_calls, **trained)
    streams, log_decay = ddlerp(**trained, backend="native")  # the torch form: gradients flow
    (streams.sum() + log_decay.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trained.values() if t is not None)


@pytest.mark.parametrize("name, shape", [("maa", (4, 16)), ("maa_w2", (5, 3, 16)), ("previous", (1, 2, 16)),
                                         ("decay_w2", (4, 15)), ("decay_w1", (15, 4))])
def test_mismatched_shapes_are_refused(name, shape):
    inputs = _inputs(1, 5, 16, 2, 4)
    inputs[name] = torch.zeros(shape)
    with pytest.raises(ValueError, match=f"ddlerp: {name} must be"):
        ddlerp(**inputs)


@needs_build
def test_rwkv_gives_the_same_logits_either_way(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from students.modeling import _CACHE_FIELD
    from students.surgery import build_student

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=120,
                                           max_position_embeddings=256, tie_word_embeddings=True))
    model = build_student(teacher.eval(), "rwkv", init="random", seed=0).eval()
    with torch.no_grad():  # the low-rank interpolation and decay weights start at zero: make them matter
        for layer in model.model.layers:
            layer.mixer.maa_w1.normal_(0, 0.3)
            layer.mixer.decay_w1.normal_(0, 0.3)
    ids = torch.randint(0, model.config.vocab_size, (2, 150))
    logits = {}
    with torch.inference_mode():
        for mode in ("compiled", "torch"):
            with monkeypatch.context() as m:
                if mode == "torch":
                    m.setenv("DISTILL_BENCH_NATIVE", "0")
                prompt = model(ids[:, :-1], use_cache=True)
                step = model(ids[:, -1:], use_cache=True, **{_CACHE_FIELD: getattr(prompt, _CACHE_FIELD)})
                logits[mode] = torch.cat([prompt.logits, step.logits], dim=1)
    torch.testing.assert_close(logits["compiled"], logits["torch"], rtol=1e-4, atol=1e-4)
    assert (logits["compiled"] - logits["torch"]).abs().max() > 0  # the compiled pass did run


def _trained(inputs):
    return {name: t.clone().requires_grad_() if t is not None else None for name, t in inputs.items()}


def _with_grads(fn, inputs):
    streams, log_decay = fn(**inputs)
    g = torch.Generator().manual_seed(1)
    loss = (streams.float() * torch.randn(streams.shape, generator=g)).sum() + \
        (log_decay.float() * torch.randn(log_decay.shape, generator=g)).sum()
    tensors = {n: t for n, t in inputs.items() if t is not None}
    return (streams, log_decay), dict(zip(tensors, torch.autograd.grad(loss, list(tensors.values()))))


@needs_build  # inductor compiles with the same C++ toolchain
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_the_training_form_compiled_by_inductor_matches_the_torch_form(monkeypatch, autocast):
    """Outputs and every gradient, on an odd shape with the token before, where a gradient is recorded (training)."""
    from kernels.ddlerp.inductor import ddlerp_inductor

    monkeypatch.setattr(ddlerp_inductor, "min_tokens", 0)
    monkeypatch.setattr(ddlerp_inductor, "compiled", None)  # compiled afresh here
    inputs = _inputs(2, 37, 40, 3, 5, 33, spread=0.5)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with context:
        (out, grads) = _with_grads(lambda **a: ddlerp(**a, backend="native"), _trained(inputs))
        (ref, ref_grads) = _with_grads(lambda **a: ddlerp(**a, backend="torch"), _trained(inputs))
    assert ddlerp_inductor.compiled is not None and not ddlerp_inductor.failed
    tol = dict(rtol=3e-2, atol=3e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(out, ref):
        torch.testing.assert_close(got.float(), want.float(), **tol)
    assert grads.keys() == ref_grads.keys() and len(grads) == 9
    for name in grads:
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, **tol, msg=name)
