"""Downstream scores of a teacher or student: the tasks of `python -m bench.evaluate`.

- Perplexity on the held-out (test) split, scored with a sliding window (Hugging Face's "Perplexity of
  fixed-length models" recipe): every token after the first is predicted exactly once, each with at least
  `window - stride` tokens of context.
- Recall vs context length: multi-query associative recall (Arora et al. 2023, "Zoology"; accuracy over
  queried values) and passkey retrieval (Mohtashami & Jaggi 2023), as in the retrieval table of Haller et
  al. 2025 (arXiv 2504.14366); documents from `bench.data.recall`.
- Cloze: predict the last word of a held-out passage (LAMBADA-style, Paperno et al. 2016), scored here
  (teacher-forced greedy accuracy of the target word's tokens) and written as a local lm-eval task.
- Any lm-eval task through the adapter in `bench.evaluation.lm_eval_adapter` (lm-eval is optional).
- Each task keeps its per-item results (`evaluate_with_items`; format in `bench.evaluation.items`), from
  which `bench.evaluation.recovery` computes families, % of the teacher recovered and their intervals.

Evaluation sets (cloze passages, recall documents) are drawn by `EvalConfig.seed`, the evaluation's own
seed: never a run's training seed, so every run of a grid is scored on the same documents.

Every score goes through `score_continuations` or `sliding_window_nll`; both batch sequences right-padded
and without an attention mask, which is exact for any causal model (a position never reads later ones), so
recurrent students, which refuse padded masks, batch as well as the teacher.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from bench.data import packing, recall
from bench.errors import EvalError
from bench.evaluation.items import item_set
from bench.evaluation.recovery import MARKER_PREFIX
from bench.evaluation.scoring import (
    context_limit,
    length_batches,
    pad_token_id,
    padded_logits,
    position_columns,
    score_continuations,
    window_nlls,
)
from bench.files import atomic_write_text

CLOZE_TASK = "distill_cloze"
_CLOZE_WORD = re.compile(r"[A-Za-z]+")
# Recall documents for evaluation come from their own seed stream, apart from training (1_000-3_000 + seed)
# and the teacher's model-card check (10_000 + length).
_RECALL_EVAL_SEED = 50_000


@dataclass
class EvalConfig:
    """What to evaluate on; the same config and model give the same scores."""

    dataset: str = "shakespeare"
    works_dir: str | None = None  # embedded texts directory (tests use a slice); None = the user cache
    seq_len: int = 256  # perplexity window (≤ the model's context)
    max_blocks: int | None = 64  # held-out tokens scored for perplexity: max_blocks × seq_len
    recall_lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    recall_docs: int = 20  # documents per (kind, length)
    cloze_items: int = 1000  # one item moves cloze recovery by ~0.1 / teacher accuracy points
    batch_size: int = 8
    seed: int = 0  # the evaluation sets' own seed (cloze passages, recall documents), never a training seed
    stride: int | None = None  # sliding-window step; None = seq_len // 2
    text_field: str = "text"
    cloze_context_words: int = 50
    max_batch_tokens: int = 16_384  # bounds sequences × length per forward pass (long recall documents)
    lm_eval_tasks: tuple[str, ...] = ()  # lm-eval task names, "standard", or CLOZE_TASK
    lm_eval_limit: int | None = None  # documents per lm-eval task (None = all)
    task_dir: str | None = None  # where the cloze lm-eval task is written (None = a temporary directory)

    def check(self) -> None:
        positive = {"seq_len": self.seq_len, "recall_docs": self.recall_docs, "cloze_items": self.cloze_items,
                    "batch_size": self.batch_size, "cloze_context_words": self.cloze_context_words,
                    "max_batch_tokens": self.max_batch_tokens}
        for name, value in positive.items():
            if value < 1:
                raise EvalError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise EvalError(f"--max-blocks must be positive, got {self.max_blocks}")
        for length in self.recall_lengths:
            if length < 1:
                raise EvalError(f"recall length {length} is not positive; pass lengths like --lengths 256,512")
        if self.stride is not None and not 1 <= self.stride <= self.seq_len:
            raise EvalError(f"--stride {self.stride} must lie in 1..--seq-len ({self.seq_len})")


def held_out_windows(model, tokenizer, config: EvalConfig, progress: bool = True) -> list[tuple[float, int]]:
    """(NLL, tokens) per sliding window of config.seq_len over the test split of `config.dataset` (no recall
    documents)."""
    packing.check_compatible(tokenizer, model.config, config.seq_len)
    spec = packing.DataSpec(dataset=config.dataset, seq_len=config.seq_len, recall_fraction=0.0,
                             text_field=config.text_field, max_blocks=config.max_blocks, works_dir=config.works_dir)
    # Consecutive packed blocks are one contiguous stream, so windows may straddle block boundaries.
    stream = packing.load_blocks(spec, tokenizer, "test").flatten()
    return window_nlls(model, stream, config.seq_len, config.stride or max(1, config.seq_len // 2),
                       config.batch_size, progress)


def held_out_ppl(model, tokenizer, config: EvalConfig, progress: bool = True) -> float:
    """Perplexity on the test split of `config.dataset`: exp(Σ NLL / Σ tokens) over the windows."""
    windows = held_out_windows(model, tokenizer, config, progress)
    return math.exp(sum(nll for nll, _ in windows) / sum(count for _, count in windows))


# --------------------------------------------------------------------------------------------- recall
@torch.no_grad()
def recall_counts(model, tokenizer, docs: Sequence[recall.RecallDoc], batch_size: int = 8,
                  max_batch_tokens: int = 16_384, progress: bool = False,
                  desc: str = "recall") -> list[tuple[int, int]]:
    """(answers predicted, answers asked) per document: an answer (MQAR: a queried value; passkey: the key)
    counts when its every token is the model's teacher-forced greedy prediction."""
    model.eval()
    encoded = [recall.answer_token_positions(doc, tokenizer) for doc in docs]
    counts = [(0, 0)] * len(docs)
    batches = length_batches([len(ids) for ids, _ in encoded], batch_size, max_batch_tokens)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        # Position i - 1 predicts answer token i: only those positions' logits are formed.
        positions, column = position_columns([[i - 1 for span in encoded[index][1] for i in span] for index in batch])
        predicted = padded_logits(model, [encoded[i][0] for i in batch], pad_token_id(tokenizer),
                                  positions).argmax(-1).tolist()
        for row, index in enumerate(batch):
            ids, spans = encoded[index]
            correct = sum(all(predicted[row][column[i - 1]] == ids[i] for i in span) for span in spans)
            counts[index] = (correct, len(spans))
    return counts


def recall_accuracy(model, tokenizer, docs: Sequence[recall.RecallDoc], batch_size: int = 8,
                    max_batch_tokens: int = 16_384, progress: bool = False, desc: str = "recall") -> float:
    """Batched `bench.data.recall.recall_accuracy`: the share of all answers predicted."""
    counts = recall_counts(model, tokenizer, docs, batch_size, max_batch_tokens, progress, desc)
    return sum(c for c, _ in counts) / max(sum(t for _, t in counts), 1)


def recall_docs(tokenizer, config: EvalConfig, kind: str, length: int) -> list[recall.RecallDoc]:
    """The evaluation's documents of one kind and length: a function of config.seed alone."""
    return recall.docs_for_length(kind, tokenizer, length, config.recall_docs,
                                  seed=_RECALL_EVAL_SEED + 100_003 * config.seed + length)


def recall_results(model, tokenizer, config: EvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """(scores, items): `recall_<kind>_<L>` for each kind and length with its per-document counts, plus
    `beyond_context_<L>: 1.0` for L > the context."""
    scores: dict[str, float] = {}
    items: dict[str, dict] = {}
    limit = context_limit(model)
    for length in config.recall_lengths:
        for kind in recall.KINDS:
            counts = recall_counts(model, tokenizer, recall_docs(tokenizer, config, kind, length), config.batch_size,
                                   config.max_batch_tokens, progress, f"{kind} {length}")
            name = f"recall_{kind}_{length}"
            scores[name] = sum(c for c, _ in counts) / max(sum(t for _, t in counts), 1)
            items[name] = item_set([c for c, _ in counts], [t for _, t in counts])
        if limit is not None and length > limit:
            scores[f"{MARKER_PREFIX}{length}"] = 1.0
    return scores, items


def recall_scores(model, tokenizer, config: EvalConfig, progress: bool = True) -> dict[str, float]:
    """`recall_<kind>_<L>` for each kind and length, plus `beyond_context_<L>: 1.0` for L > the context."""
    return recall_results(model, tokenizer, config, progress)[0]


# ---------------------------------------------------------------------------------------------- cloze
@dataclass(frozen=True)
class ClozeItem:
    context: str  # the passage up to, not including, the space before the target
    target: str  # the passage's last word (letters only)


def cloze_items(texts: Iterable[str], n_items: int, seed: int, context_words: int = 50,
                max_candidates: int = 1_000_000) -> list[ClozeItem]:
    """`n_items` passages of `context_words` words plus a target word, sampled by `seed` (LAMBADA-style:
    the target is the passage's last word). Each `context + " " + target` is verbatim source text."""
    texts = list(texts)
    candidates: list[tuple[int, int]] = []  # (text index, word index)
    spans_per_text = []
    for text_index, text in enumerate(texts):
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        spans_per_text.append(spans)
        for word_index in range(context_words, len(spans)):
            start, end = spans[word_index]
            if text[start - 1] == " " and _CLOZE_WORD.fullmatch(text, start, end):
                candidates.append((text_index, word_index))
        if len(candidates) >= max_candidates:
            break
    if len(candidates) < n_items:
        raise EvalError(f"the held-out text offers {len(candidates)} cloze passages of {context_words}+ words, "
                        f"fewer than the {n_items} asked; lower --cloze-items or use a larger dataset")
    items = []
    for text_index, word_index in sorted(random.Random(seed).sample(candidates, n_items)):
        text, spans = texts[text_index], spans_per_text[text_index]
        start, end = spans[word_index]
        items.append(ClozeItem(text[spans[word_index - context_words][0]:start - 1], text[start:end]))
    return items


def held_out_texts(config: EvalConfig, max_texts: int = 10_000) -> list[str]:
    """Documents of the test split of `config.dataset` (the first `max_texts`)."""
    spec = packing.DataSpec(dataset=config.dataset, seq_len=config.seq_len, recall_fraction=0.0,
                             text_field=config.text_field, works_dir=config.works_dir)
    texts, _ = packing.split_texts(spec, "test")
    return [text for _, text in zip(range(max_texts), texts)]


def encode_cloze(item: ClozeItem, tokenizer) -> tuple[list[int], list[int]]:
    """Context and target ids split as lm-eval's `_encode_pair` does (encode the whole, cut at the context)."""
    context = tokenizer(item.context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(item.context + " " + item.target, add_special_tokens=False)["input_ids"]
    return context, whole[len(context):]


def cloze_correct(model, tokenizer, items: Sequence[ClozeItem], batch_size: int = 8,
                  max_batch_tokens: int = 16_384, progress: bool = False) -> list[bool]:
    """Per item: are the target's tokens all the greedy predictions (lm-eval's `acc` on the cloze task)?"""
    scored = score_continuations(model, [encode_cloze(item, tokenizer) for item in items], pad_token_id(tokenizer),
                                 batch_size, context_limit(model), max_batch_tokens, progress, "cloze")
    return [greedy for _, greedy in scored]


def cloze_accuracy(model, tokenizer, items: Sequence[ClozeItem], batch_size: int = 8,
                   max_batch_tokens: int = 16_384, progress: bool = False) -> float:
    """Share of items whose target tokens are all the greedy predictions."""
    correct = cloze_correct(model, tokenizer, items, batch_size, max_batch_tokens, progress)
    return sum(correct) / len(correct)


def write_cloze_task(items: Sequence[ClozeItem], directory: str | Path, task: str = CLOZE_TASK,
                     seed: int | None = None) -> Path:
    """`<task>.jsonl` ({context, target} per line) and `<task>.yaml`, an lm-eval task in the format of
    `lambada_openai` (loglikelihood of " target"; metrics acc and perplexity). Returns the YAML path."""
    directory = Path(directory).resolve()
    rows = "".join(json.dumps({"context": item.context, "target": item.target}) + "\n" for item in items)
    atomic_write_text(directory / f"{task}.jsonl", rows)
    yaml = f"""task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(directory / f"{task}.jsonl"))}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  seed: {json.dumps(seed)}
  items: {len(items)}
"""
    atomic_write_text(directory / f"{task}.yaml", yaml)
    return directory / f"{task}.yaml"


def config_cloze_items(config: EvalConfig) -> list[ClozeItem]:
    return cloze_items(held_out_texts(config), config.cloze_items, config.seed, config.cloze_context_words)


# ------------------------------------------------------------------------------------------ all scores
def evaluate(model, tokenizer, config: EvalConfig, progress: bool = True) -> dict[str, float]:
    """Flat scores: `ppl`, `recall_<mqar|passkey>_<L>`, `cloze_acc`, `lm_<task>_<metric>` (lm-eval tasks,
    if asked), and the marker `beyond_context_<L>: 1.0` for each recall length L beyond the model's
    config.max_position_embeddings (the teacher's trained context, which students copy; students may run
    longer). Markers are not scores: `recovered` skips them."""
    return evaluate_with_items(model, tokenizer, config, progress)[0]


def evaluate_with_items(model, tokenizer, config: EvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """(flat scores as `evaluate`, item sets per score): perplexity per window, recall per document, cloze per
    passage, lm-eval per sample where lm-eval logs one (`bench.evaluation.items`)."""
    config.check()
    model.eval()
    passages = config_cloze_items(config)
    with tempfile.TemporaryDirectory(prefix="distill-bench-tasks-") as scratch:
        manager = _lm_eval_tasks(passages, config, Path(config.task_dir or scratch)) if config.lm_eval_tasks else None
        windows = held_out_windows(model, tokenizer, config, progress)
        scores = {"ppl": math.exp(sum(nll for nll, _ in windows) / sum(count for _, count in windows))}
        items = {"ppl": item_set([nll for nll, _ in windows], [count for _, count in windows])}
        recall_part, recall_items = recall_results(model, tokenizer, config, progress)
        scores.update(recall_part)
        items.update(recall_items)
        correct = cloze_correct(model, tokenizer, passages, config.batch_size, config.max_batch_tokens, progress)
        scores["cloze_acc"] = sum(correct) / len(correct)
        items["cloze_acc"] = item_set([int(c) for c in correct])
        if manager is not None:
            from bench.evaluation import lm_eval_adapter

            lm_scores, results = lm_eval_adapter.run_lm_eval(
                model, tokenizer, config.lm_eval_tasks, batch_size=config.batch_size, limit=config.lm_eval_limit,
                seed=config.seed, max_batch_tokens=config.max_batch_tokens, manager=manager, log_samples=True)
            scores.update(lm_scores)
            items.update(lm_eval_adapter.sample_items(results, lm_scores))
    return scores, items


def _lm_eval_tasks(items: Sequence[ClozeItem], config: EvalConfig, task_dir: Path):
    """Write the cloze task if asked and check every lm-eval task name before any scoring starts."""
    try:
        from bench.evaluation import lm_eval_adapter
    except ImportError:
        raise EvalError("lm-eval tasks need lm-eval; `pip install lm-eval` or drop --lm-eval-tasks") from None
    tasks = lm_eval_adapter.resolve_tasks(config.lm_eval_tasks)
    if CLOZE_TASK in tasks:
        write_cloze_task(items, task_dir, seed=config.seed)
    # Indexing lm-eval's thousands of bundled tasks takes seconds; the cloze task alone does not need it.
    return lm_eval_adapter.task_manager(tasks, str(task_dir), include_defaults=set(tasks) != {CLOZE_TASK})


