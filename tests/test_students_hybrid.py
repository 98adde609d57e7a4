"""Hybrid students: kept teacher attention layers, and the sliding window beside the recurrence (LoLCATs eq. 7)."""
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import students
from kernels import delta_rule, linear_recurrence_matrix
from students import MixerConfig, build_mixer, check_options, kept_layers
from students.window import band_softmax, band_softmax_naive, sliding_sum, sliding_sum_naive
from tests.helpers import assert_close

RECURRENT = [name for name in students.available() if name != "attention"]
GRADIENT_CHECKED = ["gla", "mamba", "gated_deltanet", "xlstm", "linear_attention"]
CONFIG = dict(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16, layer_idx=1, num_layers=3)


def make(name, **options):
    torch.manual_seed(0)
    mixer = build_mixer(name, MixerConfig(**CONFIG, options=options))
    with torch.no_grad():  # off the init (zeros, identities), so no term hides behind a special value
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return mixer


def cache_of(output):
    """The StudentCache of a forward (transformers names its field `cache` or `past_key_values`, by version)."""
    return output.cache if hasattr(output, "cache") else output.past_key_values


def steps(mixer, x):
    state, outputs = None, []
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        outputs.append(y_t)
    return torch.stack(outputs, 1), state


# ------------------------------------------------------------------------------------------ the window option
def test_window_option_is_taken_by_every_recurrent_student_and_by_no_attention_layer():
    for name in RECURRENT:
        check_options(name, {"window": 64})
        check_options(name, {"window": 0})
        for bad in (-1, True, 1.5, "64"):
            with pytest.raises(ValueError, match=f"student {name}: option window="):
                check_options(name, {"window": bad})
    check_options("linear_attention", {"window": 8, "feature_map": "hedgehog"})  # its own options still apply
    with pytest.raises(ValueError, match="student attention has no option 'window'"):
        check_options("attention", {"window": 64})
    with pytest.raises(ValueError, match="gla: window must be an int >= 0"):
        make("gla", window=-3)


@pytest.mark.parametrize("W", [1, 16, 64])
@pytest.mark.parametrize("T", [1, 37, 100])
@pytest.mark.parametrize("name", GRADIENT_CHECKED)
def test_windowed_chunk_equals_reference_in_outputs_and_gradients(name, T, W):
    mixer = make(name, window=W)
    x = torch.randn(2, T, CONFIG["hidden_size"])
    weight = torch.randn(2, T, CONFIG["hidden_size"])
    results = []
    for backend in ("chunk", "naive"):
        mixer.zero_grad()
        xb = x.clone().requires_grad_(True)
        y, _ = mixer(xb, backend=backend)
        (y * weight).sum().backward()
        results.append((y.detach(), xb.grad, {n: p.grad.clone() for n, p in mixer.named_parameters()}))
    (y, dx, grads), (y_ref, dx_ref, grads_ref) = results
    assert_close(y, y_ref, 1e-4, "output")
    assert_close(dx, dx_ref, 1e-4, "d input")
    for pname in grads:
        assert_close(grads[pname], grads_ref[pname], 1e-4, f"d {pname}")
    assert dx.abs().sum() > 0


@pytest.mark.parametrize("W", [1, 16])
@pytest.mark.parametrize("name", RECURRENT)
def test_windowed_step_by_step_and_split_calls_equal_the_full_forward(name, W):
    mixer = make(name, window=W)
    x = torch.randn(2, 37, CONFIG["hidden_size"])
    with torch.no_grad():
        full, _ = mixer(x)
        assert_close(steps(mixer, x)[0], full, 1e-4, "steps vs chunk")
        first, state = mixer(x[:, :5])  # a prefill shorter than the window, then one longer
        second, state = mixer(x[:, 5:29], state)
        third, _ = mixer.step(x[:, 29], state)
        assert_close(torch.cat([first, second, third[:, None]], 1), full[:, :30], 1e-4, "split calls")
        assert_close(mixer.reference(x), full, 1e-4, "reference")


@pytest.mark.parametrize("name", [n for n in RECURRENT if n != "gated_deltanet"])
def test_recurrent_part_is_the_unwindowed_matrix_beyond_the_window(name):
    """r_t = Σ_{s≤t−W} M⁰[t, s] v_s, with M⁰ the window-0 kernel matrix (decays over all of (s, t]), built
    here from the features without any delay."""
    W, T = 7, 40
    mixer = make(name, window=W)
    x = torch.randn(2, T, CONFIG["hidden_size"])
    with torch.no_grad():
        f = mixer.featurize(x, {})
        keys = f.with_scaled_keys().k  # Mamba-2's Δ_t k_t, as the recurrence reads them
        M0 = linear_recurrence_matrix(f.q, keys, f.log_decay, f.bonus, scale=f.scale)
        t = torch.arange(T)
        expected = torch.einsum("bhts,bshv->bthv", M0 * (t[None, :] <= t[:, None] - W), f.v.float())
        magnitude = expected.abs().max()  # errors are judged against the signal, however small the gates make it
        assert magnitude > 0
        for backend in ("chunk", "naive"):
            lagged, _ = mixer.lagged_features(f, {}, naive=backend == "naive")
            r, _ = mixer.recurrence(lagged, backend, {})
            assert_close(r.float() / magnitude, expected / magnitude, 1e-4, backend)


def test_delta_rule_recurrent_part_reads_the_memory_after_token_t_minus_W():
    """Gated DeltaNet: r_t = scale · (q_t ⊙ exp(Σ_{r=t−W+1}^{t} log α_r))ᵀ S_{t−W}, S_{t−W} from running the
    delta rule on the first t−W+1 tokens alone."""
    W, T = 6, 30
    mixer = make("gated_deltanet", window=W)
    x = torch.randn(2, T, CONFIG["hidden_size"])
    with torch.no_grad():
        f = mixer.featurize(x, {})
        lagged, _ = mixer.lagged_features(f, {})
        r, _ = mixer.recurrence(lagged, "chunk", {})
        expected = torch.zeros_like(r, dtype=torch.float32)
        for t in range(W, T):
            _, memory = delta_rule(f.q[:, :t - W + 1], f.k[:, :t - W + 1], f.v[:, :t - W + 1], f.beta[:, :t - W + 1],
                                   f.log_decay[:, :t - W + 1], output_final_state=True, backend="naive")
            decay = f.log_decay[:, t - W + 1:t + 1].sum(1).exp()  # (B, H)
            expected[:, t] = torch.einsum("bhk,bhkv->bhv", f.q[:, t].float() * decay[..., None], memory) * 16 ** -0.5
    magnitude = expected.abs().max()
    assert magnitude > 0
    assert_close(r.float() / magnitude, expected / magnitude, 1e-4)


def test_linear_attention_with_a_window_is_lolcats_equation_7():
    """ŷ_t = (Σ_window e_ts v_s + Σ_{s≤t−W} φ(q_t)·φ(k_s) v_s) / (Σ_window e_ts + Σ_{s≤t−W} φ(q_t)·φ(k_s)),
    e_ts = exp(q̃_t·k̃_s/√d − max_window), written out densely here."""
    W, T = 5, 33
    mixer = make("linear_attention", window=W, feature_map="hedgehog")
    x = torch.randn(2, T, CONFIG["hidden_size"])
    with torch.no_grad():
        f = mixer.featurize(x, {})
        q, k = mixer.window_qk(f, 0)
        scores = torch.einsum("bthk,bshk->bhts", q, k) / 16 ** 0.5
        t = torch.arange(T)
        window = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - W)
        older = t[None, :] <= t[:, None] - W
        scores = scores.masked_fill(~window, float("-inf"))
        e = (scores - scores.amax(-1, keepdim=True)).exp()
        linear = torch.einsum("bthk,bshk->bhts", f.q, f.k) * older
        weights = (e + linear) / (e + linear).sum(-1, keepdim=True)
        expected = torch.einsum("bhts,bshv->bthv", weights, f.values.float())
        core, _ = mixer.core(x)
    assert_close(core, expected, 1e-4)
    assert (linear.sum(-1) > 0).any()  # both parts are present


def test_a_window_longer_than_the_text_is_the_teachers_softmax_attention():
    """RoPE, scale and grouping as in the attention mixer: with W ≥ T, normalised linear attention's output is
    softmax attention with the same projections (W < T must differ: the test can fail)."""
    attention = make("attention")
    x = torch.randn(2, 30, CONFIG["hidden_size"])
    outputs = {}
    for W in (30, 64, 10):
        mixer = make("linear_attention", window=W)
        with torch.no_grad():
            for name in ("q_proj", "o_proj"):
                getattr(mixer, name).weight.copy_(getattr(attention, name).weight)
            for name in ("k_proj", "v_proj"):
                getattr(mixer, name).weight.copy_(students.surgery._expand_kv(getattr(attention, name).weight, 2, 4))
            outputs[W] = mixer(x)[0]
    with torch.no_grad():
        expected = attention(x)[0]
    assert_close(outputs[30], expected, 1e-4, "W = T")
    assert_close(outputs[64], expected, 1e-4, "W > T")
    assert (outputs[10] - expected).abs().max() > 1e-3


@pytest.mark.parametrize("name", RECURRENT)
def test_windowed_mixer_matrix_is_causal_and_reproduces_core(name):
    W, T = 9, 50
    mixer = make(name, window=W)
    x = torch.randn(2, T, CONFIG["hidden_size"])
    with torch.no_grad():
        core, values = mixer.core(x)
        M = mixer.mixer_matrix(x)
    assert torch.equal(M.triu(1), torch.zeros_like(M))
    assert_close(torch.einsum("bhts,bshv->bthv", M, values.float()), core.float(), 1e-4, "M @ v")
    assert not mixer.supports_matrix_terms and mixer.matrix_terms(x) is None
    assert make(name).supports_matrix_terms  # window 0 keeps the fused loss


@pytest.mark.parametrize("name", RECURRENT)
def test_window_state_grows_with_W_and_not_with_T(name):
    sizes = {W: make(name, window=W).state_size(10) for W in (1, 17, 33)}
    assert sizes[33] - sizes[17] == sizes[17] - sizes[1] > 0  # linear in W: a buffer of W tokens
    assert make(name, window=17).state_size(300) == sizes[17]
    assert sizes[1] > make(name).state_size(10)


def test_sliding_sums_stay_exact_late_in_a_long_text():
    """Strong early decays, weak late ones: a cumsum difference loses the late sums; block sums do not."""
    x = torch.cat([torch.full((1, 2000, 3), -500.0), torch.full((1, 100, 3), -1e-3)], dim=1)
    for n in (1, 4, 64):
        exact = sliding_sum_naive(x.double(), n).float()
        assert_close(sliding_sum(x, n)[:, -50:], exact[:, -50:], 1e-6, f"n={n}")
        c = x.cumsum(1)
        naive_difference = c[:, n:] - c[:, :-n]
        assert (naive_difference[:, -50:] - exact[:, -50:]).abs().max() > 1e-2  # what the block form avoids
    assert torch.equal(sliding_sum(x, 0), torch.zeros_like(x))


@pytest.mark.parametrize("first_valid", [0, 3, 9])
@pytest.mark.parametrize("W,T,block", [(10, 23, 4), (10, 1, 64), (1, 50, 8), (4, 65, 16), (2, 5, 4)])
def test_banded_softmax_equals_the_loop_with_history(W, T, block, first_valid):
    first_valid = min(first_valid, W - 1)
    q, k, v = torch.randn(2, T, 3, 8), torch.randn(2, W - 1 + T, 3, 8), torch.randn(2, W - 1 + T, 3, 5)
    k[:, :first_valid] = 1e4  # keys that do not exist would dominate any softmax that read them
    weights = torch.randn(2, T, 3, 5), torch.randn(2, T, 3)
    results = []
    for fn in (band_softmax, band_softmax_naive):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        numerator, normaliser = fn(*inputs, W, first_valid, **({"block": block} if fn is band_softmax else {}))
        ((numerator * weights[0]).sum() + (normaliser * weights[1]).sum()).backward()
        results.append((numerator, normaliser, *(t.grad for t in inputs)))
    for name, got, expected in zip(("N", "Z", "dq", "dk", "dv"), *results):
        assert_close(got, expected, 1e-5, name)  # finite too: padding queries past the text leak no NaN
    assert (results[0][1] >= 1 - 1e-6).all()  # the max term is exp(0)


def test_banded_softmax_stays_fp32_under_autocast():
    """Z_t may be shared with the recurrence's normaliser: it is summed in fp32 even where autocast runs bf16."""
    q, k, v = torch.randn(1, 40, 2, 8), torch.randn(1, 40 + 15, 2, 8), torch.randn(1, 40 + 15, 2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        numerator, normaliser = band_softmax(q, k, v, 16, 0)
    assert numerator.dtype == normaliser.dtype == torch.float32
    assert_close(numerator, band_softmax_naive(q, k, v, 16, 0)[0], 1e-5)


# ------------------------------------------------------------------------------------------ kept attention layers
def test_kept_layer_selection_rules():
    assert kept_layers(4, 2, "uniform") == [1, 3]
    assert kept_layers(32, 4, "uniform") == [4, 12, 20, 28]
    assert kept_layers(32, 16, "uniform") == list(range(1, 32, 2))
    assert kept_layers(5, 5, "uniform") == [0, 1, 2, 3, 4]
    assert kept_layers(7, 3, "first") == [0, 1, 2] and kept_layers(7, 3, "last") == [4, 5, 6]
    assert kept_layers(4, 2, "kl", scores=[0.1, 0.9, 0.3, 0.9]) == [1, 3]
    assert kept_layers(4, 0, "uniform") == kept_layers(4, 0, "last") == []
    for L in range(1, 20):
        for count in range(L + 1):
            picks = kept_layers(L, count, "uniform")
            assert len(set(picks)) == count and all(0 <= i < L for i in picks) and picks == sorted(picks)
    with pytest.raises(ValueError, match="need an int in 0..4"):
        kept_layers(4, 5, "first")
    with pytest.raises(ValueError, match="unknown selection 'middle'"):
        kept_layers(4, 1, "middle")
    with pytest.raises(ValueError, match="select='kl' needs scores, one per layer"):
        kept_layers(4, 1, "kl")
    assert kept_layers(4, 2, "recall", scores=[0.99, 0.1, 0.98, 0.0]) == [0, 2]  # recall lost per layer replaced


FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


def tiny_teacher(family="llama", layers=3):
    torch.manual_seed(0)
    config_class, model_class = FAMILIES[family]
    model = model_class(config_class(hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=120,
                                     max_position_embeddings=256, tie_word_embeddings=True))
    with torch.no_grad():  # larger weights than the default init, so mapping mistakes show in the logits
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            elif name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


def test_bad_kept_layers_are_one_clear_error(teacher):
    for keep, problem in [((0, 3), "not a layer index: 3"), ((-1,), "not a layer index: -1"),
                          ((1, 2, 1), "repeated: 1"), ((True,), "not a layer index: True"),
                          ((0.5,), "not a layer index: 0.5")]:
        with pytest.raises(ValueError, match=r"layer indices must be distinct ints in 0\.\.2") as error:
            students.build_student(teacher, "gla", keep_attention=keep)
        assert problem in str(error.value)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_a_student_with_every_layer_kept_is_the_gqa_teacher(family):
    teacher = tiny_teacher(family)
    ids = torch.randint(0, 120, (2, 25))
    with torch.no_grad():
        expected = teacher(ids).logits
        hybrid = students.build_student(teacher, "gla", "random", {"window": 4}, keep_attention=[0, 1, 2])(ids).logits
        replaced = students.build_student(teacher, "gla", "random", keep_attention=[0, 2])(ids).logits
    assert (hybrid - expected).abs().max() <= 1e-4
    assert (replaced - expected).abs().max() > 1e-2  # one replaced layer shows: the test can fail


def test_a_kept_layer_reproduces_its_teacher_layer_and_is_logged(teacher):
    student = students.build_student(teacher, "mamba", "random", keep_attention=(0,))
    ids = torch.randint(0, 120, (1, 20))
    with torch.no_grad():
        hidden = teacher(ids, output_hidden_states=True).hidden_states
        assert_close(student.layer_forward(0, hidden[0])[0], hidden[1], 1e-5, "kept layer 0")
        assert (student.layer_forward(1, hidden[1])[0] - hidden[2]).abs().max() > 1e-2
    kept_copies = [r for r in student.surgery_log if "(kept attention)" in r.note]
    assert {r.student_key for r in kept_copies} == {f"model.layers.0.mixer.{n}_proj.weight" for n in "qkvo"}
    assert not any(r.teacher_key and ".layers.1.self_attn." in r.teacher_key for r in student.surgery_log)
    assert type(student.mixers[0]).__name__ == "AttentionMixer" and type(student.mixers[1]).__name__ == "Mamba2Mixer"


def test_kept_layers_are_exposed_for_freezing(teacher):
    student = students.build_student(teacher, "gla", "qkv_copy", keep_attention=[2, 0])
    assert student.kept_layer_indices == [0, 2] and student.config.keep_attention == [0, 2]
    assert student.student_mixers == [student.mixers[1]]
    kept = student.kept_parameters()
    expected = {f"model.layers.{i}.mixer.{n}" for i in (0, 2) for n, _ in student.mixers[i].named_parameters()}
    assert set(kept) == expected and len(expected) == 8
    whole = student.kept_parameters(whole_layer=True)
    assert set(whole) > set(kept) and "model.layers.2.mlp.up_proj.weight" in whole
    assert not any(".layers.1." in name for name in whole)
    assert students.build_student(teacher, "gla").kept_parameters() == {}


@pytest.mark.parametrize("name", ["gla", "xlstm", "gated_deltanet"])
def test_hybrid_round_trip_cached_decoding_and_generate(teacher, tmp_path, name):
    student = students.build_student(teacher, name, "qkv_copy", {"window": 4}, keep_attention=[1]).eval()
    ids = torch.randint(0, 120, (2, 19))
    with torch.no_grad():
        full = student(ids).logits
        out = student(ids[:, :6], use_cache=True)
        cache, logits = cache_of(out), [out.logits]
        for t in range(6, ids.shape[1]):
            out = student(ids[:, t:t + 1], use_cache=True, past_key_values=cache)
            logits.append(out.logits)
    assert_close(torch.cat(logits, 1), full, 1e-4, "cached decoding")
    student.save_pretrained(tmp_path / "hybrid")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hybrid").eval()
    assert reloaded.config.keep_attention == [1] and reloaded.config.mixer_options == {"window": 4}
    assert [type(m).__name__ for m in reloaded.mixers] == [type(m).__name__ for m in student.mixers]
    prompt = ids[:1, :7]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, full)
        generated = reloaded.generate(prompt, max_new_tokens=6, do_sample=False)
        greedy = prompt
        for _ in range(6):  # without a cache: full forwards, token by token
            greedy = torch.cat([greedy, reloaded(greedy).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, greedy)


def test_hybrid_cache_holds_kv_for_kept_layers_and_fixed_state_elsewhere(teacher):
    student = students.build_student(teacher, "gla", "qkv_copy", {"window": 4}, keep_attention=[1]).eval()
    batch, kv_bytes_per_token = 3, 2 * 2 * 16 * 4  # k and v, 2 kv heads of 16 channels, fp32
    with torch.no_grad():
        cache = cache_of(student(torch.randint(0, 120, (batch, 10)), use_cache=True))
        sizes = [sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t)) for s in cache.states]
        for _ in range(5):
            student(torch.randint(0, 120, (batch, 1)), use_cache=True, past_key_values=cache)
    after = [sum(t.numel() * t.element_size() for t in s.values() if torch.is_tensor(t)) for s in cache.states]
    assert sizes[1] == 10 * batch * kv_bytes_per_token and after[1] == 15 * batch * kv_bytes_per_token
    assert after[0] == sizes[0] == after[2] > 0  # recurrent state + window buffers: fixed
    assert {"window_k", "lag_k", "lag_v", "kernel"} <= set(cache.states[0])
    assert cache.nbytes() == sum(after) and cache.bytes_per_sequence() * batch == cache.nbytes()
    assert cache.states[0]["window_k"].shape[1] == 3 and cache.states[0]["lag_v"].shape[1] == 4
    assert students.StudentCache(3).bytes_per_sequence() == 0
