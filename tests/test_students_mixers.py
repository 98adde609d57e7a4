"""Every student: chunked forward == reference loop == token-by-token steps == materialised matrix path."""
import pytest
import torch

import students
from students import MixerConfig, build_mixer
from tests.helpers import assert_close

EXPECTED = ["mamba", "linear_attention", "rwkv", "retnet", "gla", "xlstm", "metala", "gated_deltanet", "attention"]
CONFIG = dict(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16, layer_idx=1, num_layers=3)


def make(name, **options):
    torch.manual_seed(0)
    mixer = build_mixer(name, MixerConfig(**CONFIG, options=options))
    _perturb(mixer)
    return mixer


def _perturb(mixer):
    """Move every parameter off its init (zeros, identities) so no term can hide behind a special value."""
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape))


def test_registry_names():
    assert students.available() == EXPECTED


def test_unknown_student_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown student 'transformerxl'; choose one of mamba, linear_attention"):
        students.build_mixer("transformerxl", MixerConfig(**CONFIG))


@pytest.mark.parametrize("T", [1, 37, 100])
@pytest.mark.parametrize("name", EXPECTED)
def test_chunk_equals_reference_and_steps(name, T):
    mixer = make(name)
    x = torch.randn(2, T, CONFIG["hidden_size"])
    with torch.no_grad():
        y, _ = mixer(x, backend="chunk" if name != "attention" else "auto")
        assert y.shape == x.shape
        assert_close(y, mixer.reference(x), 1e-4, "chunk vs reference")
        state, steps = None, []
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        assert_close(torch.stack(steps, 1), y, 1e-4, "steps vs chunk")


@pytest.mark.parametrize("name", EXPECTED)
def test_two_calls_carrying_state_equal_one(name):
    mixer = make(name)
    x = torch.randn(2, 90, CONFIG["hidden_size"])
    with torch.no_grad():
        full, _ = mixer(x)
        first, state = mixer(x[:, :41])
        second, _ = mixer(x[:, 41:], state)
    assert_close(torch.cat([first, second], 1), full, 1e-4, "split")


def test_attention_keeps_its_cache_grouped_and_head_major():
    """(B, kv heads, S, K), as sdpa reads it with grouped heads: a decoded token appends to it along S and reads it in
    place, never a copy of the whole cache per token expanded to every query head (results/speed)."""
    mixer = make("attention")
    x = torch.randn(2, 9, CONFIG["hidden_size"])
    with torch.no_grad():
        _, state = mixer(x[:, :7])
        _, state = mixer(x[:, 7:8], state)
        _, state = mixer(x[:, 8:], state)
    B, G, K = 2, CONFIG["num_kv_heads"], CONFIG["head_dim"]
    assert state["k"].shape == state["v"].shape == (B, G, 9, K) and state["position"] == 9
    assert state["k"].is_contiguous() and state["v"].is_contiguous()


@pytest.mark.parametrize("options", [{}, {"window": 5}], ids=["plain", "window"])
@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "attention"])
def test_a_long_prompt_runs_in_blocks_with_the_same_outputs_and_state(monkeypatch, name, options):
    mixer = make(name, **options)
    lengths = []
    featurize = mixer.featurize
    monkeypatch.setattr(mixer, "featurize", lambda x, state: lengths.append(x.shape[1]) or featurize(x, state))
    x = torch.randn(2, 75, CONFIG["hidden_size"])
    with torch.no_grad():
        _, before = mixer(torch.randn(2, 9, CONFIG["hidden_size"]))
        whole, whole_state = mixer(x, before)
        monkeypatch.setattr(students.base, "PREFILL_BLOCK", 16)
        lengths.clear()
        blocked, blocked_state = mixer(x, before)
        assert lengths == [16, 16, 16, 16, 11]
        lengths.clear()
        assert_close(mixer(x, before, backend="naive")[0], whole, 1e-4, "the reference, in one pass")
        assert lengths == [75]
    lengths.clear()
    mixer(x, before)  # training: autograd records one pass
    assert lengths == [75]
    assert_close(blocked, whole, 1e-5, "blocks vs one pass")
    assert whole_state.keys() == blocked_state.keys()
    for key, value in whole_state.items():
        if torch.is_tensor(value):
            assert_close(blocked_state[key], value, 1e-5, f"state {key}")
        else:
            assert blocked_state[key] == value, key


@pytest.mark.parametrize("name", EXPECTED)
def test_materialised_matrix_reproduces_core(name):
    mixer = make(name)
    x = torch.randn(2, 70, CONFIG["hidden_size"])
    with torch.no_grad():
        core, values = mixer.core(x)
        M = mixer.mixer_matrix(x)
    assert M.shape == (2, CONFIG["num_heads"], 70, 70)
    assert torch.equal(M.triu(1), torch.zeros_like(M)), "mixer matrix must be causal"
    assert_close(torch.einsum("bhts,bshv->bthv", M, values.float()), core.float(), 1e-4, "M @ v")


@pytest.mark.parametrize("name", EXPECTED)
def test_gradients_reach_every_parameter(name):
    mixer = make(name)
    x = torch.randn(2, 70, CONFIG["hidden_size"], requires_grad=True)
    y, _ = mixer(x)
    (y * torch.randn(y.shape)).sum().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname}: no finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname}: zero gradient"
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("feature_map", ["elu", "hedgehog", "identity"])
def test_linear_attention_feature_maps(feature_map):
    mixer = make("linear_attention", feature_map=feature_map)
    x = torch.randn(1, 50, CONFIG["hidden_size"])
    with torch.no_grad():
        assert_close(mixer(x, backend="chunk")[0], mixer.reference(x), 1e-4, feature_map)
        core, values = mixer.core(x)
        assert_close(torch.einsum("bhts,bshv->bthv", mixer.mixer_matrix(x), values.float()), core, 1e-4)


@pytest.mark.parametrize("name", EXPECTED)
def test_state_size_is_constant_for_students_and_grows_for_attention(name):
    mixer = make(name)
    small, large = mixer.state_size(1024), mixer.state_size(32768)
    assert small > 0
    if name == "attention":
        assert large == 32 * small
    else:
        assert large == small


@pytest.mark.parametrize("input_bias", [-10.0, 0.0, 14.0])
def test_xlstm_stabiliser_and_normaliser_agree_with_chunked_form(input_bias):
    """Large input gates push |nᵀq| above 1 and the running max m_t to the soft cap."""
    mixer = make("xlstm")
    with torch.no_grad():
        mixer.i_gate.bias.fill_(input_bias)
        x = torch.randn(2, 80, CONFIG["hidden_size"])
        core, values = mixer.core(x)
        matrix = mixer.mixer_matrix(x)
        y, _ = mixer(x, backend="chunk")
        assert_close(y, mixer.reference(x), 1e-4, "chunk vs stabilised loop")
        assert_close(torch.einsum("bhts,bshv->bthv", matrix, values.float()), core, 1e-4, "M @ v")
        state, steps = None, []
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        assert_close(torch.stack(steps, 1), y, 1e-4, "steps")


@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 37])
def test_short_conv_equals_conv1d_with_and_without_a_cache(T, bias, activation):
    from students.layers import ShortConv, conv1d_reference

    torch.manual_seed(T)
    conv = ShortConv(13, 4, bias=bias, activation=activation)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    x = torch.randn(2, T, 13, requires_grad=True)
    for cache in (None, torch.randn(2, 3, 13, requires_grad=True)):
        y, new_cache = conv(x, cache)
        torch.testing.assert_close(y, conv1d_reference(conv, x, cache), rtol=1e-5, atol=1e-6)
        g = torch.randn_like(y)
        params = [x, conv.weight] + ([conv.bias] if bias else []) + ([cache] if cache is not None else [])
        got = torch.autograd.grad((conv(x, cache)[0] * g).sum(), params)
        want = torch.autograd.grad((conv1d_reference(conv, x, cache) * g).sum(), params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        expected_cache = torch.cat([torch.zeros(2, 3, 13) if cache is None else cache, x], 1)[:, -3:]
        torch.testing.assert_close(new_cache, expected_cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gated", [True, False])
def test_head_rms_norm_is_the_gated_rms_norm_formula(gated, dtype):
    """Outputs and gradients against x / sqrt(mean(x²) + eps) · w · silu(z), written out in float64."""
    from students.layers import HeadRMSNorm

    torch.manual_seed(3)
    norm = HeadRMSNorm(13, eps=1e-3)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(2, 5, 3, 13) * 0.05).to(dtype).requires_grad_()  # small, so eps matters
    z = torch.randn(2, 5, 3, 13).to(dtype).requires_grad_() if gated else None
    y = norm(x, z)
    assert y.dtype == torch.float32
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-3) * norm.weight.double()
    if gated:
        want = want * torch.nn.functional.silu(z.double())
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(want)
    params = [x, norm.weight] + ([z] if gated else [])
    got = torch.autograd.grad((y.double() * g).sum(), params)
    expected = torch.autograd.grad((want * g).sum(), params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def test_head_layer_norm_keeps_fp32_statistics_when_the_model_is_bf16():
    """A model cast to bf16 (throughput --dtype bfloat16) normalises in fp32 with its bf16 affine values."""
    from students.layers import HeadLayerNorm

    torch.manual_seed(4)
    norm = HeadLayerNorm(13)
    with torch.no_grad():
        norm.norm.weight.normal_()
        norm.norm.bias.normal_()
    norm = norm.to(torch.bfloat16)
    x = torch.randn(2, 5, 3, 13).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.float32
    x64 = x.double()
    centred = x64 - x64.mean(-1, keepdim=True)
    want = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5)
    want = want * norm.norm.weight.double() + norm.norm.bias.double()
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_rotary_reuses_angles_only_for_the_same_positions_and_frequencies():
    from students.layers import Rotary, apply_rotary, rope_inv_freq

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8)
    plain, other = Rotary(8), Rotary(8, theta=500.0)
    for rotary, theta in ((plain, 10000.0), (other, 500.0), (plain, 10000.0)):
        for offset, length in ((0, 5), (7, 5), (7, 1), (0, 5)):
            want = apply_rotary(x[:, :length], rope_inv_freq(8, theta), offset)
            torch.testing.assert_close(rotary(x[:, :length], offset), want, rtol=0, atol=0)
    with torch.inference_mode():
        plain(x, 3)
    y = torch.randn(2, 5, 3, 8, requires_grad=True)
    plain(y, 3).sum().backward()  # angles kept from inference mode would fail here
    assert y.grad is not None


def _linears(widths, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Linear(5, width, bias=False) for width in widths]


def test_stacked_linear_equals_separate_products_with_gradients_and_one_token():
    from students.layers import stacked_linear

    for T in (1, 3):
        linears = _linears([7, 3, 1])
        x = torch.randn(2, T, 5, requires_grad=True)
        want = torch.cat([linear(x) for linear in linears], -1)
        torch.testing.assert_close(stacked_linear(x, linears), want)
        grads = torch.autograd.grad(want.square().sum(), [x, *(l.weight for l in linears)])
        got = torch.autograd.grad(stacked_linear(x, linears).square().sum(), [x, *(l.weight for l in linears)])
        for a, b in zip(got, grads):
            torch.testing.assert_close(a, b)


def test_batched_linear_equals_separate_products_with_gradients():
    from students.layers import batched_linear

    linears = _linears([6, 6, 6])
    xs = torch.randn(3, 2, 5, 5, requires_grad=True)
    want = torch.stack([linear(x) for x, linear in zip(xs, linears)])
    got = batched_linear(xs, linears)
    torch.testing.assert_close(got, want)
    inputs = [xs, *(l.weight for l in linears)]
    for a, b in zip(torch.autograd.grad(got.square().sum(), inputs), torch.autograd.grad(want.square().sum(), inputs)):
        torch.testing.assert_close(a, b)
    with torch.inference_mode():
        torch.testing.assert_close(batched_linear(xs, linears), want)


@pytest.mark.parametrize("batched", [False, True])
def test_kept_weight_stacks_follow_every_change_of_a_weight(batched):
    from students.layers import kept_weight_stacks, stacked_weight

    linears = _linears([4, 4])

    def expected():
        weights = [linear.weight.detach() for linear in linears]
        return torch.stack(weights).transpose(1, 2) if batched else torch.cat(weights)

    with torch.no_grad():
        assert stacked_weight(linears, batched) is not stacked_weight(linears, batched)  # outside the scope
    with kept_weight_stacks(), torch.no_grad():
        first = stacked_weight(linears, batched)
        with kept_weight_stacks():
            assert stacked_weight(linears, batched) is first  # kept while nothing changed, nested scopes share
        assert stacked_weight(linears, batched) is first
        torch.testing.assert_close(first, expected(), rtol=0, atol=0)
        # with gradients on the stack is built in the graph (each weight gets its gradient), never the kept one
        with torch.enable_grad():
            stack = stacked_weight(linears, batched)
            assert stack.requires_grad and stack.grad_fn is not None
        for linear in linears:
            linear.weight.add_(1.0)  # in place
        torch.testing.assert_close(stacked_weight(linears, batched), expected(), rtol=0, atol=0)
        linears[0].weight.data = torch.randn(4, 5)  # replaced
        torch.testing.assert_close(stacked_weight(linears, batched), expected(), rtol=0, atol=0)
        for linear in linears:
            linear.double()
        assert stacked_weight(linears, batched).dtype == torch.float64
        torch.testing.assert_close(stacked_weight(linears, batched), expected(), rtol=0, atol=0)
    with kept_weight_stacks(), torch.inference_mode():
        torch.testing.assert_close(stacked_weight(linears, batched), expected(), rtol=0, atol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_kept_weight_stacks_keep_weights_made_in_inference_mode(batched):
    """A model loaded inside inference mode has inference-tensor weights (no version counter): their stacks are
    still kept (stacking them for every decoded token made decoding 1.1-1.2x slower), and a replaced one is noticed."""
    from students.layers import kept_weight_stacks, stacked_weight

    with torch.inference_mode():
        linears = _linears([4, 4])
    assert all(linear.weight.is_inference() for linear in linears)

    def expected():
        weights = [linear.weight for linear in linears]
        return torch.stack(weights).transpose(1, 2) if batched else torch.cat(weights)

    with kept_weight_stacks(), torch.inference_mode():
        first = stacked_weight(linears, batched)
        assert stacked_weight(linears, batched) is first
        torch.testing.assert_close(first, expected(), rtol=0, atol=0)
        linears[1].weight = torch.nn.Parameter(torch.randn(4, 5))  # replaced
        replaced = stacked_weight(linears, batched)
        assert replaced is not first
        torch.testing.assert_close(replaced, expected(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gated_deltanet", "rwkv", "mamba"])
def test_decoding_after_training_steps_reads_the_trained_weights(name):
    """Weights stacked and kept for decoding must not outlive their scope: decode, take steps of the stages' fused
    AdamW (which does not bump version counters), decode again, and compare the steps with the full forward of the
    trained mixer (run with gradients on, from the weights themselves)."""
    from students.layers import kept_weight_stacks

    mixer = make(name)
    optimizer = torch.optim.AdamW(mixer.parameters(), lr=1e-2, fused=True)
    x = torch.randn(1, 6, CONFIG["hidden_size"])
    for _ in range(2):
        with kept_weight_stacks(), torch.inference_mode():
            state, steps = None, []
            for t in range(x.shape[1]):
                y_t, state = mixer.step(x[:, t], state)
                steps.append(y_t)
        full = mixer(x)[0].detach()
        assert_close(torch.stack(steps, 1), full, 1e-4, "steps vs chunk")
        before = full.clone()
        optimizer.zero_grad()
        mixer(x)[0].square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert (mixer(x)[0] - before).abs().max() > 1e-3  # the steps did change the mixer's output


def test_rotary_rounds_the_gradient_of_16_bit_inputs_once():
    """RoPE widens x once: the gradients of its two terms add up in fp32 and are rounded to bf16 once, exactly the
    fp32 gradient of the same values, rounded (retnet's q and k under autocast)."""
    from students.layers import apply_rotary, rope_inv_freq

    g = torch.Generator().manual_seed(0)
    narrow = torch.randn(2, 37, 3, 16, generator=g).to(torch.bfloat16).requires_grad_()
    wide = narrow.detach().float().requires_grad_()
    upstream = torch.randn(2, 37, 3, 16, generator=g).to(torch.bfloat16).float()  # as the bf16 output's gradient is
    for x in (narrow, wide):
        (apply_rotary(x, rope_inv_freq(16, 10000.0), offset=5).float() * upstream).sum().backward()
    assert torch.equal(narrow.grad, wide.grad.to(torch.bfloat16))
