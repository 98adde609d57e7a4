"""Generated recall documents: multi-query associative recall (MQAR) and passkey retrieval.

MQAR (Arora et al. 2023, "Zoology") lists key-value pairs and later asks for the keys again; passkey
retrieval (Mohtashami & Jaggi 2023) hides a number in filler text and asks for it at the end. Both are
plain text, so any tokenizer can read them; each document carries the character spans of its answers,
and scoring maps those spans to tokens, so one teacher-forced forward pass scores every query.
Generation is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

KINDS = ("mqar", "passkey")
# Accuracy of a uniform guess at one answer: MQAR values are two-digit numbers 0-99 (`mqar_doc`), pass keys
# five-digit numbers 10000-99999 (`passkey_doc`). Recall recovery is corrected for it.
CHANCE = {"mqar": 1 / 100, "passkey": 1 / 90_000}
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


@dataclass(frozen=True)
class RecallDoc:
    kind: str
    text: str
    answers: tuple[tuple[int, int], ...]  # character spans [start, end) the model must predict


def _key(rng: random.Random) -> str:
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(2))


def mqar_doc(rng: random.Random, n_pairs: int, n_queries: int | None = None) -> RecallDoc:
    """"Remember: kobi 41, ... Recall: kobi 41, ..." with every queried value an answer span."""
    n_pairs = max(1, n_pairs)
    keys: list[str] = []
    while len(keys) < n_pairs:
        key = _key(rng)
        if key not in keys:
            keys.append(key)
    values = {key: str(rng.randrange(100)) for key in keys}  # two digits: one token in a small BPE
    queries = rng.sample(keys, min(n_pairs, n_queries or n_pairs))
    text = "Remember:" + ",".join(f" {key} {values[key]}" for key in keys) + ". Recall:"
    answers = []
    for index, key in enumerate(queries):
        text += f" {key}"
        answers.append((len(text) + 1, len(text) + 1 + len(values[key])))
        text += f" {values[key]}" + ("," if index + 1 < len(queries) else ".")
    return RecallDoc("mqar", text, tuple(answers))


def passkey_doc(rng: random.Random, n_filler: int) -> RecallDoc:
    """A five-digit pass key at a random depth in `n_filler` filler paragraphs, asked for at the end."""
    key = str(rng.randrange(10000, 100000))
    depth = rng.randrange(max(1, n_filler) + 1)
    text = ("There is a pass key hidden in this text. Find it and remember it. "
            + _FILLER * depth + f"The pass key is {key}. Remember it. {key} is the pass key. "
            + _FILLER * (n_filler - depth) + "What is the pass key? The pass key is")
    start = len(text) + 1
    text += f" {key}."
    return RecallDoc("passkey", text, ((start, start + len(key)),))


def make_doc(kind: str, rng: random.Random, size: int) -> RecallDoc:
    """One document; `size` is the number of pairs (MQAR) or filler paragraphs (passkey)."""
    if kind == "mqar":
        return mqar_doc(rng, size)
    if kind == "passkey":
        return passkey_doc(rng, size)
    raise ValueError(f"unknown recall kind {kind!r}; choose one of {', '.join(KINDS)}")


def size_for_length(kind: str, tokenizer, max_tokens: int, seed: int = 0) -> int:
    """Largest `size` whose documents tokenize to at most `max_tokens` (checked on a probe document)."""
    def n_tokens(size: int) -> int:
        return len(tokenizer(make_doc(kind, random.Random(seed), size).text)["input_ids"])

    low, high = 1, 2
    while n_tokens(high) <= max_tokens:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if n_tokens(middle) <= max_tokens else (low, middle)
    return low


def docs_for_length(kind: str, tokenizer, max_tokens: int, n_docs: int, seed: int) -> list[RecallDoc]:
    """`n_docs` documents of about `max_tokens` tokens (never more), deterministic in `seed`."""
    size = size_for_length(kind, tokenizer, max_tokens, seed)
    rng = random.Random(seed)
    docs = []
    while len(docs) < n_docs:
        doc = make_doc(kind, rng, size)
        shrink = size
        while len(tokenizer(doc.text)["input_ids"]) > max_tokens and shrink > 1:
            shrink -= 1
            doc = make_doc(kind, rng, shrink)
        docs.append(doc)
    return docs


def answer_token_positions(doc: RecallDoc, tokenizer) -> tuple[list[int], list[list[int]]]:
    """Token ids of the document and, per answer, the indices of the tokens covering its characters."""
    encoded = tokenizer(doc.text, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    spans = []
    for start, end in doc.answers:
        covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if not covering or covering[0] == 0:
            raise ValueError(f"answer {doc.text[start:end]!r} maps to no predictable token")
        spans.append(covering)
    return ids, spans


def recall_accuracy(model, tokenizer, docs: list[RecallDoc]) -> float:
    """Fraction of answers whose every token is the model's greedy prediction (teacher-forced)."""
    import torch  # here, so that reading chance levels and generating documents never loads torch

    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for doc in docs:
        ids, spans = answer_token_positions(doc, tokenizer)
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device)).logits[0]
        predicted = logits.argmax(-1).tolist()
        for span in spans:
            correct += all(predicted[i - 1] == ids[i] for i in span)
            total += 1
    return correct / max(total, 1)
