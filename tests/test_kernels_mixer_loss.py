"""Fused mixer-matrix loss (MOHAWK stage 1): naive == matrix_distance; tiled and Triton == naive, values and
gradients; the delta rule's chunk blocks assemble its materialised matrix."""
import pytest
import torch

import students
from bench.distill import losses
from kernels import mixer_matrix_loss
from kernels.delta_rule.matrix import delta_rule_matrix
from kernels.mixer_loss import teacher_attention
from kernels.mixer_loss.delta_rule import delta_rule_matrix_diagonals
from students import MixerConfig, build_mixer
from tests.helpers import assert_close

MIXERS = [name for name in students.available() if name != "attention"]


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton compiles on CUDA, interprets on CPU


def _inputs(T, K=24, H=4, Hkv=2, D=16, decay="channel", bonus=False, extras=False, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE)  # noqa: E731
    rand = lambda *shape: torch.rand(*shape, generator=g).to(DEVICE)  # noqa: E731
    student = dict(q=randn(B, T, H, K), k=randn(B, T, H, K))
    if decay == "head":
        student["log_decay"] = -rand(B, T, H) * 2
    elif decay == "channel":  # RWKV-6 strength: down to −20 per step
        student["log_decay"] = -rand(B, T, H, K).pow(4) * 20
    elif decay == "channel-mixed":  # mild decays (blocks that factor) up to T/2, then RWKV-6 strength (pairwise)
        mild, strong = -rand(B, T, H, K) * 0.5, -rand(B, T, H, K).pow(4) * 20
        student["log_decay"] = torch.where(torch.arange(T, device=DEVICE)[:, None, None] < T // 2, mild, strong)
    if bonus:
        student["bonus"] = randn(H, K)
    if extras:
        student["row_scale"] = rand(B, T, H) + 0.5
        student["diagonal"] = randn(H)
    for t in student.values():
        t.requires_grad_(True)
    return randn(B, T, H, D), randn(B, T, Hkv, D), student


def _value_and_grads(backend, tq, tk, student, tile=16):
    loss = mixer_matrix_loss(tq, tk, **student, tile=tile, backend=backend)
    return loss, dict(zip(student, torch.autograd.grad(loss, list(student.values()))))


def _compare(backend, tq, tk, student, tile=16):
    want, want_grads = _value_and_grads("naive", tq, tk, student)
    got, got_grads = _value_and_grads(backend, tq, tk, student, tile)
    assert_close(got, want, 1e-5)
    for name in student:
        scale = want_grads[name].abs().max().clamp_min(1e-6)
        err = (got_grads[name] - want_grads[name]).abs().max() / scale
        assert err < 1e-4, (backend, name, err.item())


CASES = {  # id: (T, decay, bonus, extras, tile)
    "T37-nodecay-tile16": (37, None, False, False, 16),
    "T37-head-rowscale-diag-tile8": (37, "head", False, True, 8),
    "T70-channel-tile16": (70, "channel", False, False, 16),
    "T70-channel-bonus-tile32": (70, "channel", True, False, 32),
    "T70-channel-mixed-tile16": (70, "channel-mixed", False, False, 16),
    "T70-channel-mixed-bonus-rowscale-diag-tile8": (70, "channel-mixed", True, True, 8),
    "T37-head-bonus-rowscale-diag-tile64": (37, "head", True, True, 64),
}


def test_naive_equals_matrix_distance_on_materialised_matrices():
    tq, tk, student = _inputs(37, decay="channel", bonus=True, extras=True, B=2)
    A = teacher_attention(tq, tk, tq.shape[-1] ** -0.5)
    assert_close(A.sum(-1), torch.ones(2, 4, 37), 1e-5)
    from kernels.mixer_loss import student_matrix

    M = student_matrix(**student)
    assert_close(mixer_matrix_loss(tq, tk, **student, backend="naive"), losses.matrix_distance(A, M), 1e-6)


@pytest.mark.parametrize("name", MIXERS)
def test_matrix_terms_describe_the_mixer_matrix(name):
    torch.manual_seed(0)
    mixer = build_mixer(name, MixerConfig(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16))
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    x = torch.randn(2, 21, 48)
    tq, tk = torch.randn(2, 21, 4, 16), torch.randn(2, 21, 2, 16)
    want = losses.matrix_distance(teacher_attention(tq, tk, 0.25), mixer.mixer_matrix(x))
    terms = mixer.matrix_terms(x)
    assert_close(mixer_matrix_loss(tq, tk, **terms, backend="naive"), want, 1e-5)
    assert_close(mixer_matrix_loss(tq, tk, **terms, tile=8, backend="tiled"), want, 1e-5)


def test_unsupported_mixers_have_no_matrix_terms():
    mixer = build_mixer("attention", MixerConfig(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16))
    assert not mixer.supports_matrix_terms and mixer.matrix_terms(torch.randn(1, 5, 48)) is None


def _delta_inputs(T, B=1, H=4, Hkv=2, K=16, decay=0.3, seed=0):
    """Gated-delta-rule student inputs (k L2-normalised, β in (0, 1), log decays down to −decay per step)."""
    g = torch.Generator().manual_seed(seed)
    student = dict(q=torch.randn(B, T, H, K, generator=g),
                   k=torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g), dim=-1),
                   beta=torch.rand(B, T, H, generator=g))
    if decay:
        student["log_decay"] = -torch.rand(B, T, H, generator=g) * decay
    for t in student.values():
        t.requires_grad_(True)
    return torch.randn(B, T, H, 16, generator=g), torch.randn(B, T, Hkv, 16, generator=g), student


DELTA_CASES = {  # id: (T, B, H, Hkv, decay per step, chunk)
    "T37-nodecay-chunk16": (37, 1, 4, 2, 0.0, 16),
    "T70-strong-chunk16-batch2": (70, 2, 4, 2, 6.0, 16),  # ratios beyond the delta floor inside chunks
    "T70-pairwise-chunk16": (70, 1, 2, 1, 14.0, 16),  # chunks spanning beyond DENORMALS.safe_span: pairwise form
    "T64-one-chunk": (64, 1, 2, 1, 0.3, 64),
    "T5-shorter-than-chunk": (5, 1, 3, 1, 0.3, 16),
    "T100-chunk7": (100, 1, 2, 2, 0.3, 7),
}


@pytest.mark.parametrize("case", list(DELTA_CASES))
def test_delta_rule_blocks_assemble_the_materialised_matrix(case):
    T, B, H, Hkv, decay, chunk = DELTA_CASES[case]
    _, _, s = _delta_inputs(T, B, H, Hkv, decay=decay)
    with torch.no_grad():
        want = delta_rule_matrix(s["q"], s["k"], s["beta"], s.get("log_decay"))
        C = min(chunk, T)
        N = -(-T // C)
        got = torch.zeros(B, H, N, C, N, C)
        for d, blocks in delta_rule_matrix_diagonals(s["q"], s["k"], s["beta"], s.get("log_decay"), chunk_size=chunk):
            assert blocks.shape == (N - d, B, H, C, C)
            got.diagonal(offset=-d, dim1=2, dim2=4).copy_(blocks.permute(1, 2, 3, 4, 0))
        got = got.view(B, H, N * C, N * C)
    assert_close(got[..., :T, :T], want, 1e-5)
    assert not got[..., T:, :].any() and not got[..., :, T:].any()  # padding writes nothing


@pytest.mark.parametrize("case", list(DELTA_CASES))
def test_delta_rule_tiled_matches_naive(case):
    T, B, H, Hkv, decay, chunk = DELTA_CASES[case]
    tq, tk, student = _delta_inputs(T, B, H, Hkv, decay=decay)
    _compare("tiled", tq, tk, student, tile=chunk)


def test_delta_rule_tiled_stays_fp32_under_bf16_autocast():
    tq, tk, student = _delta_inputs(70, decay=0.3)
    want = mixer_matrix_loss(tq, tk, **student, backend="naive")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixer_matrix_loss(tq, tk, **student, tile=16)
    assert got.dtype == torch.float32
    assert_close(got, want, 1e-5)


def test_delta_rule_row_sums_are_the_matrix_row_sums():
    mixer = build_mixer("gated_deltanet", MixerConfig(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16))
    x = torch.randn(2, 13, 48)
    with torch.no_grad():
        terms = mixer.matrix_terms(x)
        assert_close(mixer.matrix_row_sums(terms).transpose(1, 2), mixer.mixer_matrix(x).sum(-1), 1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_tiled_matches_naive(case):
    T, decay, bonus, extras, tile = CASES[case]
    tq, tk, student = _inputs(T, decay=decay, bonus=bonus, extras=extras)
    _compare("tiled", tq, tk, student, tile)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["T37-nodecay-tile16", "T70-channel-bonus-tile32", "T37-head-bonus-rowscale-diag-tile64"])
def test_triton_matches_naive(case):
    T, decay, bonus, extras, _ = CASES[case]
    tq, tk, student = _inputs(T, decay=decay, bonus=bonus, extras=extras)
    _compare("triton", tq, tk, student)


@pytest.mark.slow
def test_triton_per_channel_with_row_scale_and_diagonal_batch2():
    tq, tk, student = _inputs(37, decay="channel", extras=True, B=2)
    _compare("triton", tq, tk, student)


def test_tiled_strong_decay_over_long_span_stays_exact():
    """−20 per step for the first 200 steps, then none: the late rows need exact local decay sums."""
    tq, tk, student = _inputs(260, K=16, H=1, Hkv=1, decay=None)
    decay = torch.zeros(1, 260, 1, 16, device=DEVICE)
    decay[:, :200] = -20.0
    student["log_decay"] = decay.requires_grad_(True)
    _compare("tiled", tq, tk, student, tile=64)


def test_bad_shapes_raise_one_clear_error():
    tq, tk, s = _inputs(9, decay=None)
    bad = {
        "student q, k": dict(k=s["k"][..., :5]),
        "teacher_q": dict(tq=tq[:, :, :3]),
        "teacher_k": dict(tk=torch.randn(1, 9, 3, 16)),
        "log_decay": dict(log_decay=torch.zeros(1, 9, 4, 5)),
        "bonus": dict(bonus=torch.zeros(4, 3)),
        "row_scale": dict(row_scale=torch.zeros(1, 9)),
        "diagonal": dict(diagonal=torch.zeros(3)),
        "backend": dict(backend="cuda"),
        "beta of shape": dict(beta=torch.rand(1, 9, 3)),
        "one decay per head": dict(beta=torch.rand(1, 9, 4), log_decay=torch.zeros(1, 9, 4, 24)),
        "no bonus, row_scale or diagonal": dict(beta=torch.rand(1, 9, 4), bonus=torch.zeros(4, 24)),
        "no Triton form": dict(beta=torch.rand(1, 9, 4), backend="triton"),
    }
    for message, change in bad.items():
        args = dict(tq=tq, tk=tk, **s)
        args.update(change)
        with pytest.raises(ValueError, match=message):
            mixer_matrix_loss(args.pop("tq"), args.pop("tk"), **args)


def test_auto_materialises_on_cuda_only_where_it_fits():
    from kernels.mixer_loss import NAIVE_BYTES_PER_ENTRY, choose_backend

    need = NAIVE_BYTES_PER_ENTRY * 8 * 16 * 2048 * 2048  # the materialised loss's peak at B = 8, H = 16, T = 2,048
    assert choose_backend("cuda", 8, 16, 2048, True, free_bytes=4 * need) == "naive"
    assert choose_backend("cuda", 8, 16, 2048, True, free_bytes=4 * need - 1) == "tiled"
    # per-channel decays, the RWKV bonus and the delta rule: not one product, their materialised forms unmeasured there
    assert choose_backend("cuda", 8, 16, 2048, False, free_bytes=100 * need) == "tiled"
    assert choose_backend("cpu", 1, 1, 8, True, free_bytes=None) == "tiled"


def test_one_product_students_are_those_with_per_head_or_no_decay():
    from kernels.mixer_loss import is_one_product

    config = MixerConfig(hidden_size=48, num_heads=4, num_kv_heads=2, head_dim=16)
    terms = {name: build_mixer(name, config).matrix_terms(torch.randn(1, 9, 48)) for name in MIXERS}
    one_product = {name for name, t in terms.items()
                   if is_one_product(t.get("log_decay"), t.get("bonus"), t.get("beta"))}
    assert one_product == {"mamba", "linear_attention", "retnet", "xlstm"}  # the README's per-head / no-decay students
