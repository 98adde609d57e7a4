"""Teacher -> student surgery, inits, and students as Hugging Face models (tiny local teachers)."""
import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import students
from students.surgery import _expand_kv
from tests.helpers import assert_close

STUDENTS = students.available()


FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
            "qwen3": (Qwen3Config, Qwen3ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}


def tiny_teacher(tmp_path, head_dim=32, tie=True, family="llama", seed=0):
    torch.manual_seed(seed)
    cls_config, cls_model = FAMILIES[family]
    config = cls_config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=head_dim, vocab_size=120, max_position_embeddings=256,
                        tie_word_embeddings=tie)
    model = cls_model(config)
    with torch.no_grad():  # larger weights than the default init, so mapping mistakes show in the logits
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
            elif name.endswith("bias"):  # Qwen2's q/k/v biases
                p.normal_(0, 0.5)
    path = tmp_path / f"teacher-{family}-hd{head_dim}"
    model.save_pretrained(path)
    return students.load_teacher(str(path))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_teacher(tmp_path_factory.mktemp("t"))


@pytest.mark.parametrize("head_dim", [64, 32])
def test_attention_qkv_copy_reproduces_the_teacher(tmp_path, head_dim):
    teacher = tiny_teacher(tmp_path, head_dim=head_dim, tie=False)
    ids = torch.randint(0, 120, (2, 40))
    with torch.no_grad():
        expected = teacher(ids).logits
        copied = students.build_student(teacher, "attention", "qkv_copy").eval()(ids).logits
        fresh = students.build_student(teacher, "attention", "random").eval()(ids).logits
    assert expected.abs().max() > 0.1
    assert (copied - expected).abs().max() <= 1e-4
    assert (fresh - expected).abs().max() > 1e-2, "a random mixer must not match: the test could not fail"


def test_gqa_expansion_is_per_head_for_any_head_dim():
    weight = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2 * 3, 5)  # 2 kv heads, head dim 3
    expanded = _expand_kv(weight, kv_heads=2, heads=4)
    assert torch.equal(expanded[0:3], weight[0:3]) and torch.equal(expanded[3:6], weight[0:3])
    assert torch.equal(expanded[6:9], weight[3:6]) and torch.equal(expanded[9:12], weight[3:6])


@pytest.mark.parametrize("init", ["random", "qkv_copy"])
@pytest.mark.parametrize("name", STUDENTS)
def test_student_full_forward_equals_cached_decoding_and_round_trip(teacher, tmp_path, name, init):
    student = students.build_student(teacher, name, init).eval()
    ids = torch.randint(0, 120, (2, 23))
    with torch.no_grad():
        full = student(ids).logits
        out = student(ids[:, :5], use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        steps = [out.logits]
        for t in range(5, ids.shape[1]):
            out = student(ids[:, t:t + 1], use_cache=True, **{"cache" if hasattr(out, "cache") else "past_key_values": cache})
            steps.append(out.logits)
    assert_close(torch.cat(steps, 1), full, 1e-4, f"{name} cached decoding")
    student.save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert type(reloaded).__name__ == "StudentForCausalLM" and reloaded.config.student == name
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, full)


@pytest.mark.parametrize("init", ["random", "qkv_copy"])
@pytest.mark.parametrize("name", STUDENTS)
def test_every_copied_tensor_equals_its_teacher_source(teacher, name, init):
    student = students.build_student(teacher, name, init)
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    heads, kv_heads = teacher.config.num_attention_heads, teacher.config.num_key_value_heads
    copied = [r for r in student.surgery_log if r.teacher_key]
    assert len(copied) >= len([k for k in teacher_state if ".self_attn." not in k])
    for record in copied:
        source = teacher_state[record.teacher_key]
        if "GQA" in record.note:
            source = _expand_kv(source, kv_heads, heads)
        assert torch.equal(student_state[record.student_key], source), str(record)
    if init == "qkv_copy":
        n_layers = teacher.config.num_hidden_layers
        attention_copies = [r for r in copied if ".self_attn." in r.teacher_key]
        assert len(attention_copies) >= 4 * n_layers
    else:
        assert not any(".self_attn." in r.teacher_key for r in copied)
    # Every student parameter is accounted for in the log.
    assert {r.student_key for r in student.surgery_log} >= {k for k, _ in student.named_parameters()}
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tied stays tied


def test_surgery_logs_every_tensor(teacher, caplog):
    with caplog.at_level(logging.INFO, logger="students.surgery"):
        students.build_student(teacher, "mamba", "qkv_copy")
    assert "model.layers.0.self_attn.q_proj.weight -> model.layers.0.mixer.C_proj.weight [128, 64]" in caplog.text
    assert ("model.layers.1.self_attn.k_proj.weight -> model.layers.1.mixer.B_proj.weight [128, 64] (GQA 2 -> 4 heads)"
            in caplog.text)
    assert "(init) -> model.layers.0.mixer.A_log" in caplog.text


@pytest.mark.parametrize("name", ["mamba", "gated_deltanet", "attention"])
def test_generate_with_recurrent_cache(teacher, name):
    student = students.build_student(teacher, name, "qkv_copy").eval()
    prompt = torch.randint(0, 120, (1, 7))
    with torch.no_grad():
        generated = student.generate(prompt, max_new_tokens=6, do_sample=False)
        # Greedy decoding without a cache, token by token from full forwards, must pick the same tokens.
        ids = prompt
        for _ in range(6):
            ids = torch.cat([ids, student(ids).logits[:, -1:].argmax(-1)], 1)
    assert generated.shape == (1, 13)
    assert torch.equal(generated, ids)


def test_padded_generation_is_refused(teacher):
    student = students.build_student(teacher, "gla", "qkv_copy").eval()
    prompt = torch.randint(0, 120, (2, 6))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0
    with pytest.raises(ValueError, match="padded batches are not supported"):
        student.generate(prompt, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_recurrent_cache_does_not_grow(teacher):
    student = students.build_student(teacher, "gla", "qkv_copy").eval()
    with torch.no_grad():
        out = student(torch.randint(0, 120, (1, 10)), use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        size = cache.nbytes()
        out = student(torch.randint(0, 120, (1, 50)), use_cache=True, cache=cache)
    assert cache.nbytes() == size and cache.seen_tokens == 60


def test_bad_teachers_and_names_give_one_clear_error(tmp_path, teacher):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="unsupported teacher family 'gpt2'; supported Llama-family types: llama"):
        students.load_teacher(str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="does not exist"):
        students.load_teacher(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot load teacher config from 'HuggingFaceTB/SmolLM2-135M'") as error:
        students.load_teacher("HuggingFaceTB/SmolLM2-135M")  # a hub id goes to the hub (offline here)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown student 'lstm'; choose one of mamba"):
        students.build_student(teacher, "lstm")
    with pytest.raises(ValueError, match="unknown init 'magic'; choose one of random, qkv_copy"):
        students.build_student(teacher, "gla", "magic")
    bad = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3, head_dim=16, num_hidden_layers=1,
                      intermediate_size=32, vocab_size=50)
    bad.save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads"):
        students.load_teacher(str(tmp_path / "bad"))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_other_llama_family_teachers(tmp_path, family):
    """Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm), Mistral: the control reproduces each teacher."""
    teacher = tiny_teacher(tmp_path, family=family)
    ids = torch.randint(0, 120, (1, 30))
    with torch.no_grad():
        expected = teacher(ids).logits
        got = students.build_student(teacher, "attention", "qkv_copy").eval()(ids).logits
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["mamba", "gla", "metala"])
def test_qwen2_biases_are_copied_into_recurrent_students(tmp_path, name):
    teacher = tiny_teacher(tmp_path, family="qwen2")
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.self_attn.k_proj.bias.normal_()
    student = students.build_student(teacher, name, "qkv_copy")
    assert not any("NOT COPIED" in r.note for r in student.surgery_log)
    target = dict(student.mixers[0].QKV_COPY)
    inverse = {v: k for k, v in target.items()}
    bias = getattr(student.mixers[0], inverse["k_proj"]).bias
    assert torch.equal(bias, _expand_kv(teacher.model.layers[0].self_attn.k_proj.bias, 2, 4))
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = torch.randint(0, 120, (1, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)


@pytest.mark.parametrize("name", STUDENTS)
def test_student_cast_to_bf16_runs_prefill_decode_and_training(teacher, name):
    """A model cast whole to bf16 (throughput --dtype bfloat16, evaluation in bf16) keeps its fp32 parts (norm
    statistics, states) working: prefill, cached decoding and a training step run, and cached decoding agrees with
    the full forward up to rounding (the two paths round differently: ≤ 0.018 of the logit scale measured here)."""
    student = students.build_student(teacher, name, "qkv_copy").eval().to(torch.bfloat16)
    ids = torch.randint(0, 120, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = student(ids).logits
        out = student(ids[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, ids.shape[1]):
            out = student(ids[:, t:t + 1], use_cache=True, cache=out.cache)
            steps.append(out.logits)
    steps = torch.cat(steps, 1)
    assert full.dtype == steps.dtype == torch.bfloat16 and torch.isfinite(full).all()
    assert (steps.float() - full.float()).abs().max() <= 0.05 * full.float().abs().max(), f"{name} bf16 decoding"
    student.train()
    student(ids, labels=ids).loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())
