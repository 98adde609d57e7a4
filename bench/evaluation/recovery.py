"""% of the teacher recovered (Haller et al. 2025, arXiv 2504.14366), from flat score dictionaries."""

from __future__ import annotations

import math
import re

MARKER_PREFIX = "beyond_context_"  # `beyond_context_<L>: 1.0`: length L exceeds config.max_position_embeddings
_LOWER_IS_BETTER = re.compile(r"(^|_)(ppl|perplexity)($|_)")
RECALL_LEARNED = 0.05  # teacher recall accuracy below this (MQAR chance is 1%) counts as not learned


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


