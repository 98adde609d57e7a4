"""kernels.native's prompt pass (`backend="native"` of both recurrences): against the fp32 loops on odd shapes
(partial chunks, K ≠ V, fewer value columns than a register block and more), with and without decay and initial
state, every decay form and RWKV-6's bonus, decays strong enough to be dropped, strided and bf16 inputs; both forms
of the delta rule (token by token and chunk by chunk); when a call takes it (no gradient to record) and when the
chunked torch form runs instead; whole models giving the same logits either way. Skipped where the extension cannot
be built."""
import pytest
import torch
import torch.nn.functional as F

from kernels import delta_rule, linear_recurrence, native

needs_build = pytest.mark.skipif(native.module() is None, reason="the C++ kernels cannot be built here")
B, H, K, V = 2, 3, 5, 7
FORMS = ["scan", "chunk"]


def _use(monkeypatch, form):
    monkeypatch.setattr(native, "SCAN_MAX_STATE", 10**9 if form == "scan" else 0)


def _delta_inputs(T, decay=True, init=True, per_step=None, value_dim=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = dict(q=torch.randn(B, T, H, K, generator=g), k=F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
                  v=torch.randn(B, T, H, value_dim, generator=g), beta=torch.rand(B, T, H, generator=g),
                  log_decay=F.logsigmoid(torch.randn(B, T, H, generator=g) + 2) if decay else None,
                  initial_state=torch.randn(B, H, K, value_dim, generator=g) if init else None)
    if per_step is not None:
        inputs["log_decay"] = -per_step * (0.8 + 0.4 * torch.rand(B, T, H, generator=g))
    return inputs


def _linear_inputs(T, decay="channel", bonus=False, init=True, value_dim=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_decay = {"none": None, "head": F.logsigmoid(torch.randn(B, T, H, generator=g) + 2),
                 "channel": -torch.rand(B, T, H, K, generator=g) ** 2 * 3,
                 "strong": -30 * torch.rand(B, T, H, K, generator=g)}[decay]  # RWKV-6 channels reach −20 a step
    return dict(q=torch.randn(B, T, H, K, generator=g), k=torch.randn(B, T, H, K, generator=g),
                v=torch.randn(B, T, H, value_dim, generator=g), log_decay=log_decay,
                bonus=torch.randn(H, K, generator=g) if bonus else None,
                initial_state=torch.randn(B, H, K, value_dim, generator=g) if init else None)


def _check(fn, inputs, tol=1e-5):
    before = None if inputs["initial_state"] is None else inputs["initial_state"].clone()
    with torch.no_grad():
        o, state = fn(**inputs, output_final_state=True, backend="native")
    if before is not None:
        assert torch.equal(inputs["initial_state"], before)  # the caller's state is read, never written
    double = {name: t.double() if t is not None else None for name, t in inputs.items()}
    o_ref, state_ref = fn(**double, output_final_state=True, backend="naive")
    assert o.dtype == inputs["v"].dtype and state.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref.double(), rtol=tol, atol=tol)
    torch.testing.assert_close(state.double(), state_ref.double(), rtol=tol, atol=tol)


@needs_build
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("decay", [False, True], ids=["nodecay", "gated"])
@pytest.mark.parametrize("T", [1, 63, 64, 100, 257])
def test_the_delta_rule_pass_matches_the_loop(monkeypatch, form, T, decay, init):
    _use(monkeypatch, form)
    _check(delta_rule, _delta_inputs(T, decay, init))


@needs_build
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("value_dim", [32, 45, 64, 101, 128])  # AVX-512 builds: 64-column blocks, then 32, then a tail
def test_the_delta_rule_pass_covers_register_blocks(monkeypatch, form, value_dim):
    _use(monkeypatch, form)
    _check(delta_rule, _delta_inputs(70, value_dim=value_dim))


@needs_build
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("per_step", [1.5, 7.0])
def test_the_delta_rule_pass_is_exact_for_strong_decay(monkeypatch, form, per_step):
    """Chunks spanning e^-96 and e^-450 (the torch form halves or pairs them); decays below the floor dropped."""
    _use(monkeypatch, form)
    _check(delta_rule, _delta_inputs(200, per_step=per_step))


@needs_build
@pytest.mark.parametrize("form", FORMS)
def test_the_delta_rule_pass_reads_strided_and_bf16_inputs(monkeypatch, form):
    _use(monkeypatch, form)
    inputs = _delta_inputs(100)
    wide = torch.randn(B, 100, 2 * H, K)
    inputs["q"] = wide[:, :, :H]  # a head split of a stacked projection: strided over time
    inputs["k"] = F.normalize(wide[:, :, H:], dim=-1)
    _check(delta_rule, inputs)
    inputs["v"] = inputs["v"].bfloat16()  # the output follows v's dtype; the state stays fp32
    _check(delta_rule, inputs, tol=1e-2)


@needs_build
@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["plain", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel", "strong"])
@pytest.mark.parametrize("T", [1, 100])
def test_the_linear_recurrence_pass_matches_the_loop(T, decay, bonus, init):
    _check(linear_recurrence, _linear_inputs(T, decay, bonus, init))


@needs_build
@pytest.mark.parametrize("value_dim", [32, 45, 65, 83, 101])  # AVX-512 builds: 16-float blocks, then 8-float, then a tail
def test_the_linear_recurrence_pass_covers_register_blocks(value_dim):
    _check(linear_recurrence, _linear_inputs(41, "channel", True, value_dim=value_dim))  # token pairs, then one token


@needs_build
@pytest.mark.parametrize("key_dim", [8, 19])
def test_the_linear_recurrence_pass_exponentiates_decays_eight_at_a_time(key_dim):
    """Per-channel decays taken eight channels at a time plus a tail, from 0 down past the floor (-80: dropped)."""
    inputs = _linear_inputs(60, "channel", True)
    g = torch.Generator().manual_seed(1)
    inputs["q"], inputs["k"] = (torch.randn(B, 60, H, key_dim, generator=g) for _ in range(2))
    inputs["bonus"] = torch.randn(H, key_dim, generator=g)
    inputs["initial_state"] = torch.randn(B, H, key_dim, V, generator=g)
    inputs["log_decay"] = -120 * torch.rand(B, 60, H, key_dim, generator=g) ** 4
    _check(linear_recurrence, inputs)


@needs_build
def test_the_linear_recurrence_pass_reads_strided_and_bf16_inputs():
    inputs = _linear_inputs(50, "channel", True)
    wide = torch.randn(B, 50, H, 2 * K)
    inputs["q"], inputs["k"] = wide[..., :K], wide[..., K:]  # strided over time and heads
    _check(linear_recurrence, inputs)
    inputs["v"] = inputs["v"].bfloat16()
    _check(linear_recurrence, inputs, tol=1e-2)


def _record_compiled_calls(monkeypatch) -> list[str]:
    """The names of the extension's functions called from here on (every call given the extension), in order."""
    calls = []
    compiled = native.module()

    class Recording:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(compiled, name)

    monkeypatch.setattr(native, "without_autograd", lambda *a: Recording())
    return calls


def _ssd_terms(T, seed=2):
    g = torch.Generator().manual_seed(seed)
    return F.softplus(torch.randn(B, T, H, generator=g)), torch.randn(H, generator=g)  # Δ > 0; D of either sign


def _with_terms_written_out(inputs, key_scale, skip):
    """The recurrence in float64 on keys already scaled, then + skip ⊙ v: Mamba-2's form as the loop reads it."""
    double = {name: t.double() if t is not None else None for name, t in inputs.items()}
    double["k"] = double["k"] * key_scale.double()[..., None]
    o, state = linear_recurrence(**double, output_final_state=True, backend="naive")
    return o + skip.double()[:, None] * double["v"], state


@needs_build
@pytest.mark.parametrize("init", [False, True], ids=["s0", "init"])
@pytest.mark.parametrize("bonus", [False, True], ids=["plain", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("T", [1, 2, 63])
def test_the_linear_recurrence_pass_takes_the_key_scale_and_skip_in_its_pass(monkeypatch, T, decay, bonus, init):
    """Mamba-2's Δ_t and D as the compiled scan applies them (one token, a pair, pairs and a last token; odd widths)
    against the float64 loop with both written out; the call is the compiled one, not the torch terms around it."""
    inputs = _linear_inputs(T, decay, bonus, init)
    key_scale, skip = _ssd_terms(T)
    calls = _record_compiled_calls(monkeypatch)
    with torch.no_grad():
        o, state = linear_recurrence(**inputs, output_final_state=True, backend="native", key_scale=key_scale,
                                     skip=skip)
    assert calls == ["linear_scan"]
    o_ref, state_ref = _with_terms_written_out(inputs, key_scale, skip)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), state_ref.double(), rtol=1e-5, atol=1e-5)


@needs_build
@pytest.mark.parametrize("backend", ["naive", "step", "chunk", "native"])
def test_every_backend_takes_the_key_scale_and_skip(backend):
    """The torch forms apply the terms around the recurrence, the compiled scan in its pass: the same function. A
    bf16 v takes the torch terms on the native backend too (the skip's sum is fp32 there, and stays so)."""
    inputs = _linear_inputs(37, "head", False, True)
    key_scale, skip = _ssd_terms(37)
    o_ref, state_ref = _with_terms_written_out(inputs, key_scale, skip)
    with torch.no_grad():
        o, state = linear_recurrence(**inputs, output_final_state=True, backend=backend, key_scale=key_scale,
                                     skip=skip)
        inputs["v"] = inputs["v"].bfloat16()
        o16, _ = linear_recurrence(**inputs, output_final_state=True, backend=backend, key_scale=key_scale, skip=skip)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), state_ref.double(), rtol=1e-5, atol=1e-5)
    assert o16.dtype == torch.float32
    torch.testing.assert_close(o16.double(), o_ref, rtol=3e-2, atol=3e-2)


@needs_build
@pytest.mark.parametrize("bonus", [False, True], ids=["plain", "bonus"])
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_the_decode_step_takes_the_key_scale_and_skip_in_its_call(monkeypatch, decay, bonus):
    """A decoded token (one token, a state): the compiled step applies both terms, against the float64 loop."""
    inputs = _linear_inputs(1, decay, bonus, True)
    key_scale, skip = _ssd_terms(1)
    calls = _record_compiled_calls(monkeypatch)
    with torch.no_grad():
        o, state = linear_recurrence(**inputs, output_final_state=True, backend="step", key_scale=key_scale, skip=skip)
    assert calls == ["linear_step"]
    o_ref, state_ref = _with_terms_written_out(inputs, key_scale, skip)
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state.double(), state_ref.double(), rtol=1e-5, atol=1e-5)


def test_the_key_scale_and_skip_must_match_the_heads():
    inputs = _linear_inputs(9, "head", False, False)
    with pytest.raises(ValueError, match=r"key_scale must be \(B, T, H\)"):
        linear_recurrence(**inputs, key_scale=torch.ones(B, 9, H + 1))
    with pytest.raises(ValueError, match=r"skip must be \(H,\)"):
        linear_recurrence(**inputs, skip=torch.ones(H, 1))


@needs_build
def test_large_states_take_the_chunked_forms(monkeypatch):
    calls = _record_compiled_calls(monkeypatch)
    monkeypatch.setattr(native, "SCAN_MAX_STATE", K * V - 1)
    with torch.no_grad():
        delta_rule(**_delta_inputs(20))
        linear_recurrence(**_linear_inputs(20))  # no compiled chunk form: the torch one
    assert calls == ["delta_chunk"]
    monkeypatch.setattr(native, "SCAN_MAX_STATE", K * V)
    with torch.no_grad():
        delta_rule(**_delta_inputs(20))
        linear_recurrence(**_linear_inputs(20))
    assert calls == ["delta_chunk", "delta_scan", "linear_scan"]


@needs_build
def test_the_pass_runs_only_without_a_gradient_to_record():
    inputs = {name: t.requires_grad_() if t is not None else None for name, t in _delta_inputs(70).items()}
    assert native.without_autograd(*inputs.values()) is None
    o, _ = delta_rule(**inputs, backend="native")  # runs the chunked torch form: gradients flow
    o.sum().backward()
    assert all(t.grad is not None for t in inputs.values() if t is not None)
    with torch.no_grad():
        assert native.without_autograd(*inputs.values()) is native.module()
    with torch.inference_mode():
        assert native.without_autograd(*inputs.values()) is native.module()


@needs_build
@pytest.mark.parametrize("name", ["gated_deltanet", "rwkv", "mamba", "gla", "metala", "retnet", "linear_attention",
                                  "xlstm"])
def test_a_model_gives_the_same_logits_either_way(monkeypatch, name):
    from transformers import LlamaConfig, LlamaForCausalLM

    from students.surgery import build_student

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=120,
                                           max_position_embeddings=256, tie_word_embeddings=True))
    model = build_student(teacher.eval(), name, init="random", seed=0).eval()  # heads of 32: one register block
    ids = torch.randint(0, model.config.vocab_size, (2, 150))
    calls = []
    scan = native.scans
    with torch.inference_mode():
        with monkeypatch.context() as m:
            m.setattr(native, "scans", lambda *a: calls.append(a) or scan(*a))
            compiled = model(ids).logits
        with monkeypatch.context() as m:
            m.setenv("DISTILL_BENCH_NATIVE", "0")
            assert native.module() is None
            python = model(ids).logits
    assert len(calls) == 2  # every layer's recurrence took the compiled pass
    torch.testing.assert_close(compiled, python, rtol=1e-4, atol=1e-4)


@needs_build
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 300])
def test_the_short_convolution_pass_equals_conv1d(monkeypatch, T, bias, activation):
    """A prompt or a decoded token (T = 1) with and without a cache, fewer tokens than taps and more, channels
    strided over time (a split of a stacked projection): output and new cache as F.conv1d's, and every call took
    the compiled pass."""
    from students.layers import ShortConv, conv1d_reference

    torch.manual_seed(T)
    conv = ShortConv(37, 4, bias=bias, activation=activation)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    x = torch.randn(2, T, 50)[..., 5:42]  # strided over time
    calls = []
    compiled = native.module()

    class Counting:
        def short_conv(self, *args):
            calls.append(args[0].shape)
            return compiled.short_conv(*args)

    for cache in (None, torch.randn(2, 3, 37)):
        with torch.no_grad(), monkeypatch.context() as m:
            m.setattr(native, "without_autograd", lambda *a: Counting())
            y, new_cache = conv(x, cache)
            want = conv1d_reference(conv, x, cache)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
        expected_cache = torch.cat([torch.zeros(2, 3, 37) if cache is None else cache, x], 1)[:, -3:]
        torch.testing.assert_close(new_cache, expected_cache)
    assert calls == [(2, T, 37)] * 2


@needs_build
def test_the_short_convolution_pass_refuses_shapes_it_would_read_past():
    compiled = native.module()
    x = torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError, match="weight must be"):
        compiled.short_conv(x, torch.randn(7, 4), None, True, None, 0, 0)
    with pytest.raises(RuntimeError, match="cache must be"):
        compiled.short_conv(x, torch.randn(8, 4), None, True, torch.randn(2, 2, 8), 0, 0)
    y, cache = compiled.short_conv(x, torch.randn(8, 4), None, True, torch.randn(2, 3, 8), 0, 0)
    assert y.shape == (2, 3, 8) and cache.shape == (2, 3, 8)


@needs_build
@pytest.mark.parametrize("group", [8, 5, 64])
@pytest.mark.parametrize("T", [1, 2, 7, 130])
def test_the_short_convolution_pass_normalises_groups_as_f_normalize(T, group):
    """gated_deltanet's q and k heads normalised inside the compiled pass: as F.normalize after the torch form's
    convolution, with and without a cache, groups shorter than a vector and not a multiple of one, the channels
    after the groups untouched, a zero group left zero (F.normalize's eps) and the same next cache."""
    from students.layers import short_conv, short_conv_normalized

    torch.manual_seed(T + group)
    channels, C = 2 * group, 2 * group + 11
    weight = torch.randn(C, 4)
    x = torch.randn(2, T, C + 6)[..., 3:C + 3]  # strided over time
    x[0, :, :group] = 0  # a group whose inputs are all zero
    for cache in (None, torch.randn(2, 3, C)):
        if cache is not None:
            cache[0, :, :group] = 0
        with torch.no_grad():
            groups, rest, new_cache = short_conv_normalized(x, weight, None, True, cache, channels, group)
            with native.disabled():
                y, want_cache = short_conv(x, weight, None, True, cache)
                want_groups, want_rest, _ = short_conv_normalized(x, weight, None, True, cache, channels, group)
        want = F.normalize(y[..., :channels].unflatten(-1, (2, group)), dim=-1)
        torch.testing.assert_close(want_groups, want)  # the torch form is F.normalize's
        assert groups.shape == (2, T, 2, group) and groups.dtype == torch.float32
        torch.testing.assert_close(groups, want, rtol=1e-5, atol=1e-6)
        assert groups[0, :, 0].abs().max() == 0
        torch.testing.assert_close(groups.norm(dim=-1)[1], torch.ones(T, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rest, y[..., channels:], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rest, want_rest, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new_cache, want_cache)
