"""Per-item evidence behind each score, kept so that intervals can be computed after the fact.

An *item set* holds one score's items as columns of equal length, each packed into one string of
space-separated numbers (a record stays a few hundred lines, not thousands):

    {"value": "12.5 11.9 ...", "weight": "255 255 ..."}   # `weight` omitted: every item weighs 1

and the score is the ratio of sums, Σ value / Σ weight, or exp(Σ value / Σ weight) for a perplexity:

| score | one item | value | weight |
|---|---|---|---|
| `ppl` | a sliding window | summed NLL of its scored tokens | tokens scored |
| `recall_<kind>_<L>` | a document | answers predicted | answers asked |
| `cloze_acc` | a passage | 1 if the target word is the greedy prediction, else 0 | – |
| `lm_<task>_acc`, `..._acc_norm` | an lm-eval document | lm-eval's per-sample value | – |
| `lm_<task>_perplexity` | an lm-eval document | −log-likelihood | – |
| `lm_<task>_word_perplexity` (byte) | an lm-eval document | −log-likelihood | words (bytes) |

A ratio of sums resampled item by item is the bootstrap of Efron & Tibshirani (1993, ch. 6); with the same
resampled indices for a teacher and a student (their items are the same documents), it is paired.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def pack(values: Sequence[float]) -> str:
    """One column as a string: integers as they are, other numbers to 9 significant digits."""
    return " ".join(str(int(v)) if float(v).is_integer() else f"{float(v):.9g}" for v in values)


def unpack(column: str) -> np.ndarray:
    return np.array(column.split(), dtype=np.float64) if column else np.zeros(0)


def item_set(values: Sequence[float], weights: Sequence[float] | None = None) -> dict:
    if weights is not None and len(weights) != len(values):
        raise ValueError(f"{len(values)} values but {len(weights)} weights")
    return {"value": pack(values), **({"weight": pack(weights)} if weights is not None else {})}


def columns(items: dict) -> tuple[np.ndarray, np.ndarray]:
    value = unpack(items["value"])
    weight = unpack(items["weight"]) if "weight" in items else np.ones_like(value)
    return value, weight


def size(items: dict) -> int:
    return len(items["value"].split())


def statistic(items: dict, exponent: bool = False) -> float:
    """Σ value / Σ weight, or its exp for a perplexity."""
    value, weight = columns(items)
    ratio = value.sum() / weight.sum() if weight.sum() > 0 else math.nan
    return math.exp(ratio) if exponent else float(ratio)


def resampled(items: dict, counts: np.ndarray, exponent: bool = False) -> np.ndarray:
    """The statistic under each resample: `counts` (B, n) says how often each item is drawn."""
    value, weight = columns(items)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (counts @ value) / (counts @ weight)
    return np.exp(ratio) if exponent else ratio


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) draw counts: each row is n items drawn with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
