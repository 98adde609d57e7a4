"""Downstream scores: perplexity, recall, cloze, % recovered, the lm-eval adapter and the CLI."""
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import students
from bench.data import recall
from bench.errors import EvalError
from bench.evaluation import cli, recovery, scoring, tasks
from bench.evaluation import items as item_lib


# --------------------------------------------------------------------------------------- toy models
class _ToyLM(torch.nn.Module):
    """A causal LM stand-in: `logits_fn(input_ids) -> (B, T, V)`; the dummy parameter carries the device."""

    def __init__(self, vocab_size: int, logits_fn, context: int = 128):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=context)
        self.logits_fn = logits_fn

    def forward(self, input_ids, **unused):
        return SimpleNamespace(logits=self.logits_fn(input_ids))


def uniform_lm(vocab_size: int) -> _ToyLM:
    return _ToyLM(vocab_size, lambda ids: torch.zeros(*ids.shape, vocab_size))


def bigram_lm(vocab_size: int, seed: int = 0) -> _ToyLM:
    """Each prediction depends on the current token only, so context windows cannot change any score."""
    table = torch.randn(vocab_size, vocab_size, generator=torch.Generator().manual_seed(seed))
    return _ToyLM(vocab_size, lambda ids: table[ids])


def oracle_lm(vocab_size: int) -> _ToyLM:
    """Reads the next input token: predicts every teacher-forced target (the upper bound of any task)."""
    def logits(ids):
        following = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
        return torch.nn.functional.one_hot(following, vocab_size).float()
    return _ToyLM(vocab_size, logits)


def lookup_oracle_lm(vocab_size: int, texts: list[list[int]]) -> _ToyLM:
    """Knows each text: after any prefix of one, predicts its true next token (also the unseen last one)."""
    following = {tuple(ids[:i]): ids[i] for ids in texts for i in range(1, len(ids))}

    def logits(ids):
        out = torch.zeros(*ids.shape, vocab_size)
        for row, sequence in enumerate(ids.tolist()):
            for position in range(len(sequence)):
                if tuple(sequence[:position + 1]) in following:
                    out[row, position, following[tuple(sequence[:position + 1])]] = 1.0
        return out
    return _ToyLM(vocab_size, logits)


def partial_oracle_lm(vocab_size: int) -> _ToyLM:
    """The oracle, except that it never predicts a token id divisible by 3 (it says 1 instead)."""
    oracle = oracle_lm(vocab_size).logits_fn

    def logits(ids):
        following = oracle(ids).argmax(-1)
        following[following % 3 == 0] = 1
        return torch.nn.functional.one_hot(following, vocab_size).float()
    return _ToyLM(vocab_size, logits)


def guessing_lm(vocab_size: int, seed: int = 0) -> _ToyLM:
    generator = torch.Generator().manual_seed(seed)
    return _ToyLM(vocab_size, lambda ids: torch.randn(*ids.shape, vocab_size, generator=generator))


def tiny_llama(vocab_size: int = 50, context: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=16, max_position_embeddings=context)).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return students.load_teacher(str(tiny_teacher_dir))


@pytest.fixture(scope="module")
def student(teacher):
    # GLA: a recurrent student with per-channel decay, and among the fastest on CPU.
    return students.build_student(teacher, "gla", init="qkv_copy", seed=0).eval()


def direct_logprob(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context) from one unbatched forward pass (the definition, no shared code)."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logprobs[len(context) + i - 1, token].item() for i, token in enumerate(continuation))


# ---------------------------------------------------------------------------------------- perplexity
def test_uniform_model_perplexity_equals_vocabulary_size():
    ids = torch.randint(0, 37, (203,), generator=torch.Generator().manual_seed(1))
    for window, stride in [(16, 5), (16, 16), (300, 150)]:  # rel 1e-6: log(37) in fp32 logits
        assert scoring.perplexity(uniform_lm(37), ids, window, stride, batch_size=3) == pytest.approx(37.0, rel=1e-6)


@pytest.mark.parametrize("n_tokens,window,stride", [(2, 4, 1), (10, 4, 4), (63, 16, 5), (100, 16, 16), (257, 64, 63)])
def test_sliding_windows_score_every_target_exactly_once(n_tokens, window, stride):
    windows = scoring.sliding_windows(n_tokens, window, stride)
    scored = [position + 1 for start, stop, score_from in windows for position in range(score_from, stop)]
    assert scored == list(range(1, n_tokens))
    assert all(stop - start == min(window, n_tokens - 1) and start <= score_from for start, stop, score_from in windows)


def test_sliding_window_equals_single_pass_when_the_text_fits():
    model = tiny_llama(context=64)
    ids = torch.randint(0, 50, (41,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        single = model(ids[None], labels=ids[None]).loss.item() * (len(ids) - 1)
    for stride in (1, 7, 64):
        total, count = scoring.sliding_window_nll(model, ids, window=64, stride=stride)
        assert count == len(ids) - 1 and total == pytest.approx(single, rel=1e-5)


def test_sliding_window_counts_each_token_once_when_the_text_does_not_fit():
    model = bigram_lm(23)  # context-free, so the exact total NLL is known whatever the windows
    ids = torch.randint(0, 23, (150,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
    expected = -logprobs[torch.arange(149), ids[1:]].sum().item()
    for stride in (1, 5, 16):
        total, count = scoring.sliding_window_nll(model, ids, window=16, stride=stride, batch_size=4)
        assert count == 149 and total == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------------------------- recall
@pytest.mark.parametrize("kind", recall.KINDS)
def test_recall_scores_an_oracle_fully_and_a_guesser_near_chance(kind, tokenizer):
    docs = recall.docs_for_length(kind, tokenizer, 200, n_docs=6, seed=4)
    vocab = len(tokenizer)
    assert tasks.recall_accuracy(oracle_lm(vocab), tokenizer, docs, batch_size=4) == 1.0
    assert tasks.recall_accuracy(guessing_lm(vocab), tokenizer, docs, batch_size=4) < 0.05
    partial = tasks.recall_accuracy(partial_oracle_lm(vocab), tokenizer, docs, batch_size=4)
    assert 0 < partial < 1 and partial == recall.recall_accuracy(partial_oracle_lm(vocab), tokenizer, docs)


def test_batched_recall_matches_the_unbatched_reference(tokenizer, student):
    docs = recall.docs_for_length("mqar", tokenizer, 120, n_docs=5, seed=5)
    docs += recall.docs_for_length("passkey", tokenizer, 90, n_docs=3, seed=5)  # mixed lengths: padded batches
    reference = recall.recall_accuracy(student, tokenizer, docs)
    assert tasks.recall_accuracy(student, tokenizer, docs, batch_size=8) == reference


# ---------------------------------------------------------------------------------------------- cloze
def test_cloze_items_are_deterministic_by_seed_and_end_with_their_target(works_dir):
    config = tasks.EvalConfig(works_dir=str(works_dir), cloze_items=12, cloze_context_words=20)
    texts = tasks.held_out_texts(config)
    first = tasks.cloze_items(texts, 12, seed=0, context_words=20)
    assert first == tasks.cloze_items(texts, 12, seed=0, context_words=20)
    assert first != tasks.cloze_items(texts, 12, seed=1, context_words=20)
    for item in first:
        passage = item.context + " " + item.target
        assert any(passage in text for text in texts)
        assert passage.split()[-1] == item.target and item.target.isalpha()
        assert len(item.context.split()) == 20
    with pytest.raises(EvalError, match="cloze passages"):
        tasks.cloze_items(texts, 10**6, seed=0)


def test_cloze_accuracy_of_an_oracle_and_a_guesser(works_dir, tokenizer):
    items = tasks.cloze_items(tasks.held_out_texts(tasks.EvalConfig(works_dir=str(works_dir))), 10, seed=0, context_words=10)
    passages = [sum(tasks.encode_cloze(item, tokenizer), []) for item in items]
    assert tasks.cloze_accuracy(lookup_oracle_lm(len(tokenizer), passages), tokenizer, items, batch_size=3) == 1.0
    assert tasks.cloze_accuracy(guessing_lm(len(tokenizer)), tokenizer, items, batch_size=3) < 0.2


def test_padded_batches_score_as_one_request_at_a_time(student, tokenizer):
    rng = random.Random(6)
    requests = [([rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 30))],
                 [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 4))]) for _ in range(9)]
    batched = scoring.score_continuations(student, requests, tokenizer.eos_token_id, batch_size=4)
    for (logprob, greedy), (context, continuation) in zip(batched, requests):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            predicted = student(ids).logits[0, len(context) - 1:-1].argmax(-1).tolist()
        assert logprob == pytest.approx(direct_logprob(student, context, continuation), abs=1e-4)
        assert greedy == (predicted == continuation)


# ------------------------------------------------------------------------------------------ recovered
def test_logits_formed_at_chosen_positions_equal_those_of_a_whole_forward(student, teacher):
    """Scores read the LM head at their positions only (`logits_to_keep`); a model without it gets every position's
    logits and the chosen columns, so both must give the same numbers."""
    vocab = teacher.config.vocab_size
    rng = random.Random(3)
    sequences = [[rng.randrange(vocab) for _ in range(length)] for length in (17, 9, 30)]
    positions = [0, 4, 8, 16, 29]
    for model in (student, teacher):
        assert scoring.forms_chosen_logits(model)
        whole = scoring.padded_logits(model, sequences, 0)
        torch.testing.assert_close(scoring.padded_logits(model, sequences, 0, positions), whole[:, positions],
                                   rtol=0, atol=1e-5)
    ids = torch.tensor([sequences[2]])
    with torch.no_grad():
        torch.testing.assert_close(student(ids, logits_to_keep=3).logits, student(ids).logits[:, -3:], rtol=0, atol=1e-5)
    assert not scoring.forms_chosen_logits(_ToyLM(vocab, lambda ids: student(input_ids=ids).logits))

    class TakesButIgnores(_ToyLM):  # takes logits_to_keep and forms every position anyway
        def forward(self, input_ids, logits_to_keep=0, **unused):
            return SimpleNamespace(logits=self.logits_fn(input_ids))

    ignoring = TakesButIgnores(vocab, lambda ids: student(input_ids=ids).logits)
    assert scoring.forms_chosen_logits(ignoring)
    torch.testing.assert_close(scoring.padded_logits(ignoring, sequences, 0, positions),
                               scoring.padded_logits(student, sequences, 0, positions), rtol=0, atol=1e-5)
    stream = torch.tensor([rng.randrange(vocab) for _ in range(70)])
    reference = []  # each window alone, every position's logits
    for start, stop, score_from in scoring.sliding_windows(len(stream), 24, 10):
        with torch.no_grad():
            logprobs = torch.log_softmax(student(stream[None, start:stop]).logits[0].double(), -1)
        targets = stream[score_from + 1:stop + 1]
        reference.append((-logprobs[score_from - start:stop - start].gather(-1, targets[:, None]).sum().item(), len(targets)))
    chosen = scoring.window_nlls(student, stream, window=24, stride=10, batch_size=3)
    assert [count for _, count in chosen] == [count for _, count in reference]
    assert [nll for nll, _ in chosen] == pytest.approx([nll for nll, _ in reference], rel=1e-5)


def test_recovered_is_student_over_teacher_inverted_for_perplexity_and_chance_corrected_for_recall():
    student = {"ppl": 20.0, "cloze_acc": 0.3, "recall_mqar_256": 0.5, "recall_mqar_4096": 0.2,
               "lm_lambada_openai_perplexity": 40.0, "beyond_context_4096": 1.0, "recall_passkey_256": 0.4}
    teacher = {"ppl": 10.0, "cloze_acc": 0.6, "recall_mqar_256": 1.0, "recall_mqar_4096": 0.2,
               "lm_lambada_openai_perplexity": 30.0, "beyond_context_4096": 1.0, "recall_passkey_256": 0.0}
    percents = recovery.recovered(student, teacher)
    assert percents["ppl"] == pytest.approx(50.0) and percents["cloze_acc"] == pytest.approx(50.0)
    assert percents["lm_lambada_openai_perplexity"] == pytest.approx(75.0)
    assert percents["recall_mqar_256"] == pytest.approx(100 * (0.5 - 0.01) / (1.0 - 0.01))
    assert percents["recall_mqar_4096"] == pytest.approx(100.0)  # reported, but beyond context: not averaged
    assert "recall_passkey_256" not in percents and "beyond_context_4096" not in percents  # teacher 0 / marker
    families = recovery.summary(student, teacher)["families"]
    assert {name: f["tasks"] for name, f in families.items()} == {
        "language": ["ppl"], "recall": ["recall_mqar_256"], "cloze": ["cloze_acc"],
        "lm_eval": ["lm_lambada_openai_perplexity"]}
    assert percents["avg"] == pytest.approx((50 + 100 * 0.49 / 0.99 + 50 + 75) / 4)  # one vote per family
    assert recovery.recovered(teacher, teacher)["avg"] == pytest.approx(100.0)


@pytest.mark.parametrize("kind", recall.KINDS)
def test_chance_correction_maps_chance_to_zero_and_the_teacher_to_one(kind):
    chance, teacher = recall.CHANCE[kind], 0.9
    task = recovery.Task(f"recall_{kind}_512", "recall", True)
    assert task.chance == chance
    assert recovery.task_recovery(task, chance, teacher) == 0.0
    assert recovery.task_recovery(task, teacher, teacher) == 1.0
    assert recovery.task_recovery(task, (chance + teacher) / 2, teacher) == pytest.approx(0.5)
    assert recovery.task_recovery(task, 0.0, teacher) == 0.0 and recovery.task_recovery(task, 1.0, teacher) == 1.0


def test_a_student_perfect_on_language_and_at_chance_on_recall_keeps_two_of_three_families():
    teacher = {"ppl": 30.0, "cloze_acc": 0.2, **{f"recall_{k}_{n}": 1.0 for k in recall.KINDS for n in (256, 512, 1024)}}
    student = {**teacher, **{f"recall_{k}_{n}": recall.CHANCE[k] for k in recall.KINDS for n in (256, 512, 1024)}}
    found = recovery.summary(student, teacher)
    assert found["families"]["recall"]["recovery"] == 0.0 and found["families"]["language"]["recovery"] == 1.0
    assert found["pct_recovered"]["value"] == pytest.approx(200 / 3)  # six recall tasks are one family, not 6 of 8


def test_unlearned_and_out_of_context_recall_is_reported_not_averaged():
    teacher = {"ppl": 10.0, "recall_mqar_256": 0.03, "recall_passkey_256": 1.0, "recall_passkey_4096": 0.5,
               "beyond_context_4096": 1.0}
    student = {"ppl": 10.0, "recall_mqar_256": 0.03, "recall_passkey_256": 0.5, "recall_passkey_4096": 0.5}
    entries = recovery.summary(student, teacher)["tasks"]
    assert entries["recall_passkey_256"]["averaged"] and not entries["recall_mqar_256"]["averaged"]
    assert "not learned" in entries["recall_mqar_256"]["why"]
    assert entries["recall_passkey_4096"]["why"] == "beyond the teacher's context"


def test_win_and_tie_rate_and_critical_tolerance_on_hand_made_scores():
    teacher = {"ppl": 10.0, "cloze_acc": 0.5, "recall_mqar_256": 1.0, "lm_piqa_acc": 0.7, "lm_piqa_acc_norm": 0.6,
               "lm_arc_easy_acc": 0.4}
    student = {"ppl": 10.4, "cloze_acc": 0.48, "recall_mqar_256": 0.505, "lm_piqa_acc": 0.7, "lm_piqa_acc_norm": 0.5,
               "lm_arc_easy_acc": 0.5}
    found = recovery.summary(student, teacher)
    gaps = {name: entry["tolerance"] for name, entry in found["tasks"].items()}
    # ppl 4% worse, cloze 4% worse, recall half the way from chance, piqa by acc_norm 1/6 worse, arc above the teacher
    assert gaps == pytest.approx({"ppl": 0.04, "cloze_acc": 0.04, "recall_mqar_256": 0.5, "lm_piqa_acc_norm": 1 / 6,
                                  "lm_arc_easy_acc": 0.0})
    assert found["c_alpha"] == {"alpha": 0.05, "value": pytest.approx(3 / 5)}
    assert found["alpha_star"] == pytest.approx(0.5)
    assert recovery.win_and_tie(list(gaps.values()), found["alpha_star"]) == 1.0
    assert recovery.win_and_tie(list(gaps.values()), 0.0) == pytest.approx(1 / 5)
    assert recovery.summary(teacher, teacher)["alpha_star"] == 0.0  # the teacher is lossless against itself


def _coin_items(rng, n: int, p: float) -> dict:
    return item_lib.item_set((rng.random(n) < p).astype(int).tolist())


def test_bootstrap_interval_contains_the_point_estimate_and_shrinks_with_more_items():
    import numpy as np

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1000):
        teacher_items, student_items = _coin_items(rng, n, 0.5), _coin_items(rng, n, 0.4)
        teacher = {"cloze_acc": item_lib.statistic(teacher_items)}
        student = {"cloze_acc": item_lib.statistic(student_items)}
        found = recovery.summary(student, teacher, {"cloze_acc": student_items}, {"cloze_acc": teacher_items})
        cloze, pct = found["families"]["cloze"], found["pct_recovered"]
        assert cloze["lo"] < cloze["recovery"] < cloze["hi"] and pct["lo"] < pct["value"] < pct["hi"]
        assert found == recovery.summary(student, teacher, {"cloze_acc": student_items}, {"cloze_acc": teacher_items})
        widths.append(cloze["hi"] - cloze["lo"])
    assert widths[1] < 0.5 * widths[0]  # ~1/sqrt(10)


def test_the_bootstrap_is_paired_so_identical_items_give_a_zero_width_interval():
    import numpy as np

    items = {"cloze_acc": _coin_items(np.random.default_rng(1), 200, 0.3),
             "ppl": item_lib.item_set([3.0, 2.5, 4.0, 3.2], [100, 100, 100, 80])}
    scores = {"cloze_acc": item_lib.statistic(items["cloze_acc"]), "ppl": item_lib.statistic(items["ppl"], True)}
    found = recovery.summary(scores, scores, items, items)
    assert found["pct_recovered"] == {"value": pytest.approx(100.0), "lo": pytest.approx(100.0), "hi": pytest.approx(100.0)}


def test_intervals_need_items_on_both_sides_and_every_task_of_a_family():
    scores = {"cloze_acc": 0.5, "recall_mqar_256": 0.9, "recall_passkey_256": 0.9}
    items = {"cloze_acc": item_lib.item_set([1, 0]), "recall_mqar_256": item_lib.item_set([9], [10])}
    found = recovery.summary(scores, scores, items, items)
    assert found["families"]["cloze"]["lo"] is not None and found["tasks"]["recall_mqar_256"]["lo"] is not None
    assert found["families"]["recall"]["lo"] is None and found["pct_recovered"]["lo"] is None  # passkey has none
    assert recovery.summary(scores, scores, items, None)["bootstrap"] is None


def test_item_sets_pack_compactly_and_give_back_their_score():
    packed = item_lib.item_set([1.5, 2, 0.123456789012], [10, 20, 30])
    assert packed == {"value": "1.5 2 0.123456789", "weight": "10 20 30"}
    assert item_lib.statistic(packed) == pytest.approx((1.5 + 2 + 0.123456789) / 60)
    assert item_lib.statistic(item_lib.item_set([2.0], [1]), exponent=True) == pytest.approx(math.exp(2.0))


def test_lm_eval_samples_become_item_sets_that_reproduce_its_scores():
    pytest.importorskip("lm_eval")
    from bench.evaluation.lm_eval_adapter import sample_items

    samples = [{"doc_id": 1, "filter": "none", "metrics": ["acc", "perplexity", "word_perplexity", "bits_per_byte"],
                "acc": 1.0, "perplexity": -2.0, "word_perplexity": (-2.0, 4), "bits_per_byte": (-2.0, 9)},
               {"doc_id": 0, "filter": "none", "metrics": ["acc", "perplexity", "word_perplexity", "bits_per_byte"],
                "acc": 0.0, "perplexity": -1.0, "word_perplexity": (-1.0, 2), "bits_per_byte": (-1.0, 5)}]
    scores = {"lm_t_acc": 0.5, "lm_t_perplexity": math.exp(1.5), "lm_t_word_perplexity": math.exp(3 / 6),
              "lm_t_bits_per_byte": 0.3}
    found = sample_items({"samples": {"t": samples}}, scores)
    assert set(found) == {"lm_t_acc", "lm_t_perplexity", "lm_t_word_perplexity"}  # bits_per_byte: no interval
    assert found["lm_t_acc"] == {"value": "0 1"}  # document order
    for name, items in found.items():
        assert item_lib.statistic(items, recovery.lower_is_better(name)) == pytest.approx(scores[name])


# ------------------------------------------------------------------------------------- teacher cache
def test_teacher_scores_are_computed_once_per_teacher_and_evaluation_config(tmp_path, monkeypatch):
    from dataclasses import replace

    from bench.evaluation import teacher_cache

    calls = []

    def counted(model, tokenizer, config, progress=True):
        calls.append(config)
        return {"ppl": 10.0 + len(calls)}, {"ppl": item_lib.item_set([1.0], [1])}

    monkeypatch.setattr(tasks, "evaluate_with_items", counted)
    model, config = uniform_lm(11), tasks.EvalConfig(recall_lengths=(64,))
    first = teacher_cache.teacher_scores(model, None, config, "abc123", tmp_path)
    again = teacher_cache.teacher_scores(model, None, replace(config, batch_size=2), "abc123", tmp_path)
    assert len(calls) == 1 and first == again and first[0] == {"ppl": 11.0}  # a batch size measures nothing
    teacher_cache.teacher_scores(model, None, replace(config, seed=1), "abc123", tmp_path)  # other documents
    teacher_cache.teacher_scores(model, None, config, "hub:org/model", tmp_path)  # another teacher
    assert len(calls) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    (tmp_path / first[2]).write_text("{")  # a torn file is evaluated again
    assert teacher_cache.teacher_scores(model, None, config, "abc123", tmp_path)[0] == {"ppl": 14.0}
    teacher_cache.teacher_scores(model, None, config, "unknown", tmp_path)  # no fingerprint: never cached
    teacher_cache.teacher_scores(model, None, config, "unknown", tmp_path)
    assert len(calls) == 6 and len(list(tmp_path.glob("*.json"))) == 3


# ------------------------------------------------------------------------------------------- lm-eval
@pytest.fixture
def offline_lm_eval(monkeypatch):
    """lm-eval without its provenance calls (a `git describe` subprocess, torch's collect_env): seconds saved."""
    import lm_eval
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lambda: "test")
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
    return lm_eval


def test_lm_eval_adapter_matches_a_direct_forward_pass(tmp_path, works_dir, teacher, tokenizer, offline_lm_eval):
    lm_eval = offline_lm_eval
    from lm_eval.tasks import TaskManager

    from bench.evaluation.lm_eval_adapter import DistillBenchLM

    items = tasks.cloze_items(tasks.held_out_texts(tasks.EvalConfig(works_dir=str(works_dir))), 6, seed=0, context_words=12)
    tasks.write_cloze_task(items, tmp_path, seed=0)
    results = lm_eval.simple_evaluate(model=DistillBenchLM(model=teacher, tokenizer=tokenizer, batch_size=4),
                                      tasks=[tasks.CLOZE_TASK], task_manager=TaskManager(include_path=str(tmp_path),
                                                                                      include_defaults=False),
                                      log_samples=True, bootstrap_iters=0)
    samples = results["samples"][tasks.CLOZE_TASK]
    assert len(samples) == len(items)
    for sample in samples:
        item = tasks.ClozeItem(sample["doc"]["context"], sample["doc"]["target"])
        logprob, _ = sample["filtered_resps"][0]
        assert logprob == pytest.approx(direct_logprob(teacher, *tasks.encode_cloze(item, tokenizer)), abs=1e-4)
    assert results["results"][tasks.CLOZE_TASK]["acc,none"] == tasks.cloze_accuracy(teacher, tokenizer, items)


def test_lm_eval_adapter_rolling_and_generation(student, tokenizer):
    import lm_eval  # noqa: F401  (a test dependency)
    from lm_eval.api.instance import Instance
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from bench.evaluation.lm_eval_adapter import DistillBenchLM

    lm = DistillBenchLM(model=student, tokenizer=tokenizer, batch_size=2, max_length=16)
    text = "Ham. What say you, my lord? The time is out of joint, good night sweet lady."
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > 16  # several rolling windows
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
    # lm-eval's own windows (disjoint predictions, each window at most 16 tokens), scored one by one here.
    windows = map(make_disjoint_window, get_rolling_token_windows(ids, tokenizer.eos_token_id, 16, context_len=1))
    assert rolling == pytest.approx(sum(direct_logprob(student, a, b) for a, b in windows), abs=1e-4)

    context = "Ham. What say"
    request = Instance("generate_until", {}, (context, {"until": ["\n\n"], "max_gen_toks": 6}), 0)
    generated = lm.generate_until([request], disable_tqdm=True)[0]
    greedy = tokenizer(context)["input_ids"]
    with torch.no_grad():
        for _ in range(6):  # the full forward every step: checks the cached recurrent generation too
            greedy.append(student(torch.tensor([greedy])).logits[0, -1].argmax().item())
            if greedy[-1] == tokenizer.eos_token_id:
                break
    expected_text = tokenizer.decode(greedy[len(tokenizer(context)["input_ids"]):]).split("\n\n")[0]
    assert generated == expected_text


def test_flat_scores_and_standard_tasks():
    import lm_eval  # noqa: F401  (a test dependency)

    from bench.evaluation.lm_eval_adapter import STANDARD_TASKS, flat_scores, resolve_tasks

    assert resolve_tasks("standard,piqa,distill_cloze") == [*STANDARD_TASKS, "distill_cloze"]
    scores = flat_scores({"results": {"piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.1,
                                               "acc_norm,none": 0.7, "sample_len": 9}}})
    assert scores == {"lm_piqa_acc": 0.6, "lm_piqa_acc_norm": 0.7}


# ------------------------------------------------------------------------------------ evaluate and CLI
def test_evaluate_a_tiny_student_and_its_teacher(student, teacher, tokenizer, works_dir):
    config = tasks.EvalConfig(works_dir=str(works_dir), seq_len=64, max_blocks=3, recall_lengths=(64, 160),
                           recall_docs=2, cloze_items=4, cloze_context_words=8, batch_size=4)
    scores = tasks.evaluate(student, tokenizer, config, progress=False)
    assert set(scores) == {"ppl", "recall_mqar_64", "recall_passkey_64", "recall_mqar_160", "recall_passkey_160",
                           "cloze_acc", "beyond_context_160"}  # the tiny teacher's context is 128
    assert 1 < scores["ppl"] < len(tokenizer) * 10 and all(0 <= scores[k] <= 1 for k in scores if "recall" in k)
    again, items = tasks.evaluate_with_items(student, tokenizer, config, progress=False)
    assert again == scores  # deterministic
    assert set(items) == set(scores) - {"beyond_context_160"}
    assert item_lib.size(items["cloze_acc"]) == 4 and item_lib.size(items["recall_mqar_64"]) == 2
    for name, item_set in items.items():  # every score is its items' statistic
        assert item_lib.statistic(item_set, recovery.lower_is_better(name)) == pytest.approx(scores[name], rel=1e-7)
    teacher_scores, teacher_items = tasks.evaluate_with_items(teacher, tokenizer, config, progress=False)
    percents = recovery.recovered(scores, teacher_scores)
    assert "ppl" in percents and math.isfinite(percents["avg"])
    found = recovery.summary(scores, teacher_scores, items, teacher_items)
    assert found["families"]["language"]["lo"] <= found["families"]["language"]["recovery"] <= \
        found["families"]["language"]["hi"]


@pytest.mark.parametrize("arguments,message", [
    (["--model", "/nonexistent/student"], "does not exist"),
    (["--model", "{teacher}", "--lengths", "256,-5"], "not positive"),
    (["--model", "{teacher}", "--lengths", "abc"], "comma-separated"),
    (["--model", "{teacher}", "--teacher", "./missing-teacher"], "does not exist"),
    (["--model", "{teacher}", "--batch-size", "0"], "must be positive"),
    ([], "required"),
])
def test_bad_cli_input_gives_one_line_and_exit_code_2(arguments, message, tiny_teacher_dir, capsys):
    code = cli.main([a.format(teacher=tiny_teacher_dir) for a in arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.startswith("error:") and "\n" not in err


@pytest.mark.parametrize("how", ["truncated", "missing"])
def test_a_model_with_broken_weights_is_one_error_line(how, tiny_teacher_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "student"
    shutil.copytree(tiny_teacher_dir, broken)
    weights = broken / "model.safetensors"
    if how == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    assert cli.main(["--model", str(broken), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load model") and "\n" not in err


def test_cli_writes_scores_as_json(tiny_teacher_dir, works_dir, tmp_path, monkeypatch, capsys):
    from bench import provenance as env

    monkeypatch.setattr(env, "git_commit", lambda: "test")
    out = tmp_path / "scores.json"
    code = cli.main(["--model", str(tiny_teacher_dir), "--teacher", str(tiny_teacher_dir), "--works-dir",
                    str(works_dir), "--seq-len", "64", "--max-blocks", "2", "--lengths", "64", "--recall-docs", "1",
                    "--cloze-items", "3", "--seed", "3", "--no-progress", "--json", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["scores"] == record["teacher_scores"] and record["recovered"]["avg"] == pytest.approx(100.0)
    pct = record["summary"]["pct_recovered"]  # the same model twice: the paired interval has no width
    assert pct["value"] == pct["lo"] == pct["hi"] == pytest.approx(100.0) and record["summary"]["alpha_star"] == 0.0
    assert record["items"]["model"] == record["items"]["teacher"] and "cloze_acc" in record["items"]["model"]
    out = capsys.readouterr().out
    assert record["config"]["seed"] == 3 and "avg % recovered" in out and "C_0.05" in out


def test_evaluate_scores_lm_eval_tasks_on_the_same_cloze_items(tokenizer, works_dir, tmp_path, offline_lm_eval):
    config = tasks.EvalConfig(works_dir=str(works_dir), seq_len=32, max_blocks=1, recall_lengths=(32,), recall_docs=1,
                           cloze_items=5, cloze_context_words=8, lm_eval_tasks=(tasks.CLOZE_TASK,), task_dir=str(tmp_path))
    passages = [sum(tasks.encode_cloze(item, tokenizer), []) for item in tasks.config_cloze_items(config)]
    scores, items = tasks.evaluate_with_items(lookup_oracle_lm(len(tokenizer), passages), tokenizer, config,
                                              progress=False)
    assert scores["cloze_acc"] == scores["lm_distill_cloze_acc"] == 1.0
    assert items["lm_distill_cloze_acc"] == items["cloze_acc"] == {"value": "1 1 1 1 1"}  # per sample, from lm-eval
    assert item_lib.statistic(items["lm_distill_cloze_perplexity"], True) == pytest.approx(
        scores["lm_distill_cloze_perplexity"])
    assert (tmp_path / f"{tasks.CLOZE_TASK}.yaml").exists() and (tmp_path / f"{tasks.CLOZE_TASK}.jsonl").exists()
    from bench.evaluation.lm_eval_adapter import task_manager

    with pytest.raises(EvalError, match="unknown lm-eval task"):  # before any scoring starts
        task_manager(["no_such_task", tasks.CLOZE_TASK], str(tmp_path), include_defaults=False)
