"""How much of the teacher a student keeps: score families, 95% intervals, % recovered, C_α and α*.

This module is the one place these are defined (docs/evaluation.md summarises it); the leaderboard, the
tables, the claims and the figures read what `summary` returns.

**Tasks and their recovery r.** Every score the student and the teacher both have is a task of one family:

- *language*: `ppl`, perplexity on the held-out test split; r = teacher ppl / student ppl. The validation
  KL(teacher ‖ student) stands beside it (record `metrics.val_kl`, leaderboard `val_kl`), not averaged.
- *recall*: `recall_<kind>_<L>`, MQAR and passkey at each length L, chance-corrected:
  r = clip((s − c) / (t − c), 0, 1), with c the accuracy of a uniform guess (`bench.data.recall.CHANCE`:
  MQAR 1/100, passkey 1/90,000), so a student at chance scores 0 and one as good as the teacher 1.
- *cloze*: `cloze_acc`; r = s / t.
- *lm_eval*: each lm-eval task by one metric, the first of `LM_EVAL_METRICS` it reports; r = s / t
  (t / s for a perplexity).

A task is reported but not averaged when the teacher has nothing to recover there: a recall length beyond
the teacher's context (marker `beyond_context_<L>`), a recall task the teacher has not learned (accuracy below
`POLICY.recall_learned`), or a teacher score that is not positive and finite.

**Families and % recovered.** A family's recovery is the mean r over its averaged tasks; `pct_recovered` is
100 × the mean over the families present (one vote per family, however many tasks it has, so six recall
tasks cannot outweigh perplexity).

**Intervals.** 95% percentile intervals from a paired bootstrap over items (`bench.evaluation.items`):
each task's items (windows, documents, passages, lm-eval samples) are resampled `POLICY.resamples` times
with one generator per task seeded by (`POLICY.bootstrap_seed`, the task's name), and the same draws score
the teacher and the student. Each resample gives every task's r, hence every family's and % recovered, so
all intervals come from the same resamples. The inclusion of a task is decided once, on the point
estimates. A family (or % recovered) gets an interval only when every task in it has items on both sides;
records written before items were kept get point estimates only.

**Win-and-Tie rate C_α** (Hauzenberger et al. 2026, arXiv 2603.15590), over the averaged tasks: a task is a
win-or-tie at tolerance α when the student reaches at least (1 − α) of the teacher, i.e. r ≥ 1 − α (recall
chance-corrected), or, for a perplexity, when the student's is at most (1 + α) times the teacher's. Each task
thus needs α_i = max(0, 1 − r) (perplexity: max(0, s / t − 1)); C_α is the share of tasks with α_i ≤ α,
reported at α = `POLICY.tie_alpha`, and **α*** = max α_i is the smallest tolerance at which every task is a
win-or-tie (C_α* = 1; α* = 0: lossless on these tasks).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from bench.data.recall import CHANCE
from bench.evaluation import items as item_lib

MARKER_PREFIX = "beyond_context_"  # `beyond_context_<L>: 1.0`: length L exceeds config.max_position_embeddings
_LOWER_IS_BETTER = re.compile(r"(^|_)(ppl|perplexity)($|_)")
_RECALL = re.compile(r"^recall_([a-z]+)_(\d+)$")
FAMILIES = ("language", "recall", "cloze", "lm_eval")
# One metric per lm-eval task, the first it reports: length-normalised accuracy where the task has it.
LM_EVAL_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "word_perplexity", "perplexity")


@dataclass(frozen=True)
class Policy:
    """The thresholds of this module, named once; the leaderboard and the claims read them from here."""

    recall_learned: float = 0.05  # teacher recall accuracy below this (MQAR chance is 1%): not learned
    resamples: int = 1000
    bootstrap_seed: int = 20_250_420
    confidence: float = 0.95
    tie_alpha: float = 0.05  # the α of the reported C_α


POLICY = Policy()


def is_score(name: str) -> bool:
    return not name.startswith(MARKER_PREFIX)


def lower_is_better(name: str) -> bool:
    """Perplexities (`ppl`, `lm_lambada_openai_perplexity`, ...) improve downwards."""
    return bool(_LOWER_IS_BETTER.search(name))


def natural_order(name: str) -> list:
    """recall_mqar_256 before recall_mqar_1024."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def lm_eval_task(name: str) -> tuple[str, str] | None:
    """(task, metric) of `lm_<task>_<metric>` for the metrics in LM_EVAL_METRICS, else None."""
    if not name.startswith("lm_"):
        return None
    for metric in sorted(LM_EVAL_METRICS, key=len, reverse=True):
        if name.endswith("_" + metric) and len(name) > len(metric) + 4:
            return name[3:-len(metric) - 1], metric
    return None


@dataclass(frozen=True)
class Task:
    name: str
    family: str
    averaged: bool
    why: str = ""  # why a task is reported but not averaged

    @property
    def lower(self) -> bool:
        return lower_is_better(self.name)

    @property
    def chance(self) -> float | None:
        match = _RECALL.match(self.name)
        return CHANCE.get(match.group(1), 0.0) if match else None


def tasks(student: dict, teacher: dict, policy: Policy = POLICY) -> list[Task]:
    """The tasks of both score dictionaries, each with its family and whether it is averaged."""
    beyond = {name.removeprefix(MARKER_PREFIX) for name in teacher if name.startswith(MARKER_PREFIX)}
    shared = [n for n in sorted(set(student) & set(teacher), key=natural_order)
              if is_score(n) and _number(teacher[n]) is not None]
    chosen = {}
    for name in shared:  # one metric per lm-eval task
        parsed = lm_eval_task(name)
        if parsed and (parsed[0] not in chosen or
                       LM_EVAL_METRICS.index(parsed[1]) < LM_EVAL_METRICS.index(lm_eval_task(chosen[parsed[0]])[1])):
            chosen[parsed[0]] = name
    out = []
    for name in shared:
        t = float(teacher[name])
        if name == "ppl":
            family = "language"
        elif _RECALL.match(name):
            family = "recall"
        elif name == "cloze_acc":
            family = "cloze"
        elif name in chosen.values():
            family = "lm_eval"
        else:
            continue
        why = ""
        if not (math.isfinite(t) and t > 0):
            why = "teacher score not positive"
        elif family == "recall" and name.rsplit("_", 1)[-1] in beyond:
            why = "beyond the teacher's context"
        elif family == "recall" and t < policy.recall_learned:
            why = f"teacher below {policy.recall_learned:.0%}: not learned"
        out.append(Task(name, family, not why, why))
    return out


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def task_recovery(task: Task, student, teacher):
    """r for one task; works on floats and on arrays of resampled scores (NaN where undefined)."""
    s, t = np.asarray(student, dtype=np.float64), np.asarray(teacher, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if task.family == "recall":
            c = task.chance
            r = np.where(t > c, np.clip((s - c) / (t - c), 0.0, 1.0), np.nan)
        elif task.lower:
            r = np.where(s > 0, t / s, np.nan)
        else:
            r = np.where(t > 0, s / t, np.nan)
    return float(r) if r.ndim == 0 else r


def tolerance_needed(task: Task, r: float) -> float:
    """α_i: the smallest α at which the task is a win-or-tie (see the module docstring)."""
    if not math.isfinite(r):
        return math.inf
    if task.lower:
        return max(0.0, 1.0 / r - 1.0) if r > 0 else math.inf
    return max(0.0, 1.0 - r)


def win_and_tie(gaps: list[float], alpha: float) -> float | None:
    """C_α: the share of tasks whose α_i ≤ α (1e-12 absorbs rounding in 1 − r)."""
    return sum(g <= alpha + 1e-12 for g in gaps) / len(gaps) if gaps else None


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summary(student: dict, teacher: dict, student_items: dict | None = None, teacher_items: dict | None = None,
            policy: Policy = POLICY) -> dict:
    """Tasks, families, % recovered (each with its 95% interval where items allow), C_α and α*.

    {"tasks": {name: {family, student, teacher, recovery, lo, hi, averaged, why, tolerance}},
     "families": {family: {recovery, lo, hi, tasks}}, "pct_recovered": {value, lo, hi},
     "c_alpha": {alpha, value}, "alpha_star": float, "bootstrap": {resamples, seed, confidence} | None}
    Recoveries are fractions (1 = the teacher's); `pct_recovered` is in percent."""
    plan = tasks(student, teacher, policy)
    out_tasks, draws = {}, {}
    for task in plan:
        r = task_recovery(task, float(student[task.name]), float(teacher[task.name]))
        entry = {"family": task.family, "student": float(student[task.name]), "teacher": float(teacher[task.name]),
                 "recovery": r if math.isfinite(r) else None, "lo": None, "hi": None, "averaged": task.averaged,
                 "why": task.why, "tolerance": tolerance_needed(task, r) if task.averaged else None}
        drawn = _draws(task, (student_items or {}).get(task.name), (teacher_items or {}).get(task.name), policy)
        if drawn is not None:
            draws[task.name] = drawn
            entry["lo"], entry["hi"] = _interval(drawn, policy)
        if task.averaged and entry["recovery"] is None:  # e.g. a student perplexity of inf
            entry["averaged"], entry["why"], entry["tolerance"] = False, "student score not finite", None
        out_tasks[task.name] = entry
    families, family_draws = {}, {}
    for family in FAMILIES:
        members = [n for n, e in out_tasks.items() if e["family"] == family and e["averaged"]]
        if not members:
            continue
        families[family] = {"recovery": _mean([out_tasks[n]["recovery"] for n in members]), "lo": None, "hi": None,
                            "tasks": members}
        if all(n in draws for n in members):
            family_draws[family] = _nanmean(np.stack([draws[n] for n in members]))
            families[family]["lo"], families[family]["hi"] = _interval(family_draws[family], policy)
    pct = {"value": None, "lo": None, "hi": None}
    if families:
        pct["value"] = 100.0 * _mean([f["recovery"] for f in families.values()])
        if len(family_draws) == len(families):
            pooled = 100.0 * _nanmean(np.stack(list(family_draws.values())))
            pct["lo"], pct["hi"] = _interval(pooled, policy)
    gaps = [e["tolerance"] for e in out_tasks.values() if e["averaged"]]
    return {"tasks": out_tasks, "families": families, "pct_recovered": pct,
            "c_alpha": {"alpha": policy.tie_alpha, "value": win_and_tie(gaps, policy.tie_alpha)},
            "alpha_star": max(gaps) if gaps else None,
            "bootstrap": {"resamples": policy.resamples, "seed": policy.bootstrap_seed,
                          "confidence": policy.confidence} if draws else None}


def _draws(task: Task, student_items: dict | None, teacher_items: dict | None, policy: Policy):
    """r under each paired resample of the task's items, or None without items on both sides."""
    if not student_items or not teacher_items:
        return None
    n = item_lib.size(student_items)
    if n == 0 or item_lib.size(teacher_items) != n:
        return None
    rng = np.random.default_rng([policy.bootstrap_seed, zlib.crc32(task.name.encode())])
    counts = item_lib.resample_counts(n, policy.resamples, rng)
    return task_recovery(task, item_lib.resampled(student_items, counts, task.lower),
                         item_lib.resampled(teacher_items, counts, task.lower))


def _interval(draws: np.ndarray, policy: Policy) -> tuple[float | None, float | None]:
    tail = 100 * (1 - policy.confidence) / 2
    finite = draws[np.isfinite(draws)]
    if not len(finite):
        return None, None
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def _nanmean(stack: np.ndarray) -> np.ndarray:
    """Column means over the finite rows; NaN where a resample left every row undefined."""
    finite = np.isfinite(stack)
    count = finite.sum(axis=0)
    total = np.where(finite, stack, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def recovered(student: dict, teacher: dict) -> dict[str, float]:
    """100 · r per score both have (every metric, averaged or not, where r is defined) and `avg`, the point
    estimate of `pct_recovered` (NaN when no family has an averaged task)."""
    percents: dict[str, float] = {}
    plan = {task.name: task for task in tasks(student, teacher)}
    for name in sorted(set(student) & set(teacher)):
        t, s = _number(teacher[name]), _number(student[name])
        if not is_score(name) or t is None or s is None or not (math.isfinite(t) and t > 0) or math.isnan(s):
            continue
        task = plan.get(name) or Task(name, "recall" if _RECALL.match(name) else "other", False)
        r = task_recovery(task, s, t)
        if math.isfinite(r):
            percents[name] = 100.0 * r
    value = summary(student, teacher)["pct_recovered"]["value"]
    percents["avg"] = value if value is not None else float("nan")
    return percents
