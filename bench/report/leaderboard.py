"""`results/leaderboard.csv`, regenerated from the run records in `results/runs/*.json`.

`python -m bench.leaderboard [--results-dir DIR]` rebuilds it and prints it as a Markdown table sorted by
% of the teacher recovered. The CSV is derived data: rebuilding it is idempotent, and a lock plus an
atomic rename keep concurrent runs from tearing it. A malformed record is reported by name and skipped.

Scores come from `bench.evaluation.recovery` (families, % recovered, intervals, C_α, α*): a record's stored
summary, or, for a record written before items were kept, a summary computed from its flat scores (point
estimates, no intervals). `cell_flag` marks every run of a cell (runs that differ only in their seed) whose
seeds ran on different commits, on a dirty tree or in different precisions; `cells` and `cell_interval` aggregate seeds for the
tables, the claims and the figures.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench.evaluation import recovery
from bench.files import atomic_write_text, locked

RECALL_LENGTHS = (256, 512, 1024, 2048, 4096)
TIE_COLUMN = f"c_{recovery.POLICY.tie_alpha:g}"  # C_α at the policy's α, e.g. c_0.05
FAMILY_COLUMNS = [f"pct_{family}{end}" for family in recovery.FAMILIES for end in ("", "_lo", "_hi")]
COLUMNS = (["run_id", "teacher", "teacher_sha", "student", "keep", "init", "stages", "tokens", "seed", "eval_seed", "params",
            "state_bytes", "val_ppl", "teacher_val_ppl", "val_kl"] + [f"recall_{n}" for n in RECALL_LENGTHS]
           + ["cloze_acc", "pct_recovered", "pct_recovered_lo", "pct_recovered_hi", *FAMILY_COLUMNS, TIE_COLUMN,
              "alpha_star", "prefill_tok_s_2048", "prefill_tok_s_16384", "decode_ms_32768",
              "backend", "device", "dtype", "torch", "commit", "dirty", "cell_flag", "config_hash", "date",
              "others_share", "steal_share"])
MARKDOWN_COLUMNS = ["student", "init", "seed", "tokens", "val_ppl", "teacher_val_ppl", "val_kl", "cloze_acc",
                    "pct_recovered", TIE_COLUMN, "alpha_star", "prefill_tok_s_2048", "decode_ms_32768", "state_bytes",
                    "cell_flag"]


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def _at(sweep: dict, section: str, role: str, key: int):
    return (sweep.get(section, {}).get(role) or {}).get(str(key))


def config_hash(record: dict) -> str:
    """The record's `config_hash` (runs that differ only in seed share it), recomputed from its settings as
    `RunSettings.config_hash` does for records written before it was stored."""
    if record.get("config_hash"):
        return record["config_hash"]
    identity = {k: v for k, v in record["settings"].items() if k not in ("seed", "run_name")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def summary(evaluation: dict) -> dict | None:
    """The evaluation's families, % recovered, C_α and α*: stored, else computed from its flat scores."""
    if evaluation.get("summary"):
        return evaluation["summary"]
    if evaluation.get("student") and evaluation.get("teacher"):
        return recovery.summary(evaluation["student"], evaluation["teacher"])
    return None


def _summary_columns(found: dict | None) -> dict:
    out = {column: None for column in ["pct_recovered", "pct_recovered_lo", "pct_recovered_hi", *FAMILY_COLUMNS,
                                       TIE_COLUMN, "alpha_star"]}
    if not found:
        return out
    pct = found["pct_recovered"]
    out.update({"pct_recovered": pct["value"], "pct_recovered_lo": pct["lo"], "pct_recovered_hi": pct["hi"],
                TIE_COLUMN: found["c_alpha"]["value"], "alpha_star": found["alpha_star"]})
    for family, entry in found["families"].items():
        for end, key in (("", "recovery"), ("_lo", "lo"), ("_hi", "hi")):
            out[f"pct_{family}{end}"] = None if entry[key] is None else 100.0 * entry[key]
    return out


def row(record: dict) -> dict:
    """One leaderboard row: the documented columns first, every other score after them."""
    settings, machine, metrics = record["settings"], record["machine"], record["metrics"]
    evaluation = record.get("evaluation") or {}
    student_scores = evaluation.get("student", {})
    teacher_scores = evaluation.get("teacher", {})
    # Records from before the evaluation had its own seed were scored on documents drawn by the training seed.
    eval_seed = evaluation.get("eval_seed", settings["seed"]) if student_scores else None
    commit = machine.get("commit")
    keep = ",".join(map(str, record.get("keep_attention") or []))  # a hybrid is its own entry: student+keep<layers>
    throughput = record.get("throughput") or {}
    recall = {}
    for length in RECALL_LENGTHS:
        kinds = [student_scores[k] for k in (f"recall_mqar_{length}", f"recall_passkey_{length}") if k in student_scores]
        recall[f"recall_{length}"] = sum(kinds) / len(kinds) if kinds else None
    out = {
        "run_id": record["run"], "teacher": "+".join(settings["teachers"]),
        "teacher_sha": record.get("teacher_fingerprint"), "student": settings["student"] + (f"+keep{keep}" if keep else ""),
        "keep": keep,
        "init": settings["init"], "stages": "+".join(settings["stages"]), "tokens": settings["tokens"],
        "seed": settings["seed"], "eval_seed": eval_seed, "params": record["params"]["student"],
        "state_bytes": sum(record["state_bytes_per_layer"]),  # at the trained length: a kept layer's KV grows
        "val_ppl": metrics["val_ppl_student"], "teacher_val_ppl": metrics["val_ppl_teacher"],
        "val_kl": metrics["val_kl"], **recall, "cloze_acc": student_scores.get("cloze_acc"),
        **_summary_columns(summary(evaluation)),
        "prefill_tok_s_2048": _at(throughput, "prefill_tokens_per_s", "student", 2048),
        "prefill_tok_s_16384": _at(throughput, "prefill_tokens_per_s", "student", 16384),
        "decode_ms_32768": _at(throughput, "decode_ms_per_token", "student", 32768),
        "backend": (throughput.get("backend") or {}).get("student"), "device": machine.get("device_name"),
        "dtype": "bf16" if record.get("bf16") else "fp32", "torch": machine.get("torch"),
        "commit": commit, "dirty": bool(commit and str(commit).endswith("-dirty")), "cell_flag": "",
        "config_hash": config_hash(record), "date": record["date"],
        # what else ran on the run's CPUs over its last invocation (records from before it was measured: empty)
        **{key: (record.get("activity") or {}).get(key) for key in ("others_share", "steal_share")},
    }
    recovered = recovery.recovered(student_scores, teacher_scores) if student_scores and teacher_scores else {}
    for prefix, scores in (("student_", student_scores), ("teacher_", teacher_scores), ("recovered_", recovered)):
        out.update({f"{prefix}{k}": v for k, v in scores.items() if not isinstance(v, (dict, list))})
    for section, name in (("prefill_tokens_per_s", "prefill_tok_s"), ("decode_ms_per_token", "decode_ms")):
        for length, value in (throughput.get(section, {}).get("teacher") or {}).items():
            out[f"teacher_{name}_{length}"] = value
    out["seconds"] = record.get("seconds")
    return {k: _round(v) for k, v in out.items()}


def load_rows(results_dir: Path, report=lambda message: print(message, file=sys.stderr)) -> list[dict]:
    rows = []
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            rows.append(row(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # one bad record must not hide the others
            report(f"skipped malformed record {path.name}: {type(error).__name__}: {error}")
    return flag_cells(rows)


def flag_cells(rows: list[dict]) -> list[dict]:
    """Set `cell_flag` on every row of a cell (same config_hash) whose seeds ran on different commits
    ("mixed commits"), on a dirty tree ("dirty tree") or in different precisions ("mixed precision": records
    from before the identity held the precision `--dtype auto` resolved to, run on machines that differ)."""
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[r.get("config_hash")].append(r)
    for members in by_cell.values():
        commits = {str(r.get("commit") or "unknown").removesuffix("-dirty") for r in members}
        flags = (["mixed commits"] if len(commits) > 1 else []) + \
            (["dirty tree"] if any(truthy(r.get("dirty")) for r in members) else []) + \
            (["mixed precision"] if len({r.get("dtype") for r in members}) > 1 else [])
        for r in members:
            r["cell_flag"] = ", ".join(flags)
    return rows


# --------------------------------------------------------------------------- seeds of a cell, aggregated
def number(value) -> float | None:
    """A CSV cell or record value as a float; None for empty, missing or non-numeric."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def truthy(value) -> bool:
    return value is True or str(value).lower() == "true"


def cells(rows: list[dict], key: tuple[str, ...] = ("student", "init")) -> dict[tuple, list[dict]]:
    """Rows grouped by `key` (default: one cell per student and init, its seeds together)."""
    grouped = defaultdict(list)
    for r in rows:
        grouped[tuple(r.get(k) for k in key)].append(r)
    return dict(grouped)


def primary_rows(rows: list[dict]) -> list[dict]:
    """Per student and init, the rows of its most common stage list, precision and token budget: a grid's cells
    without the ablation runs of the same student and init (e.g. the `no_hidden` grid), which the claims compare
    on their own, and without runs of another precision or budget, which are not more seeds of the cell."""
    setup = lambda r: (str(r.get("stages")), str(r.get("dtype")), str(r.get("tokens")))  # noqa: E731
    counts = defaultdict(lambda: defaultdict(int))
    for r in rows:
        counts[(r.get("student"), r.get("init"))][setup(r)] += 1
    main = {key: max(by_setup, key=lambda found: (by_setup[found], found)) for key, by_setup in counts.items()}
    return [r for r in rows if setup(r) == main[(r.get("student"), r.get("init"))]]


def cell_flag(rows: list[dict]) -> str:
    """The flags of a cell's rows, merged ('' when its seeds share one clean commit)."""
    flags = [flag for r in rows for flag in str(r.get("cell_flag") or "").split(", ") if flag]
    return ", ".join(dict.fromkeys(flags))


@dataclass(frozen=True)
class CellValue:
    """One column over a cell's seeds: mean, and an interval of the kind named.

    kind "bootstrap": every seed has its 95% bootstrap interval; [lo, hi] spans them all (min lo, max hi).
    kind "seeds": some seed lacks one; [lo, hi] is the min–max over two or more seeds.
    kind "one run": a single seed without interval; lo = hi = its value."""

    mean: float
    lo: float
    hi: float
    kind: str
    n: int


def cell_value(rows: list[dict], column: str) -> CellValue | None:
    values = [number(r.get(column)) for r in rows]
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    los = [number(r.get(f"{column}_lo")) for r in rows if number(r.get(column)) is not None]
    his = [number(r.get(f"{column}_hi")) for r in rows if number(r.get(column)) is not None]
    if all(v is not None for v in los + his):
        return CellValue(mean, min(los), max(his), "bootstrap", len(values))
    if len(values) > 1:
        return CellValue(mean, min(values), max(values), "seeds", len(values))
    return CellValue(mean, mean, mean, "one run", 1)


def rebuild(results_dir: Path, report=lambda message: print(message, file=sys.stderr)) -> Path:
    """Rewrite the CSV from every record: documented columns first, extra scores after, sorted by name."""
    results_dir = Path(results_dir)
    target = results_dir / "leaderboard.csv"
    with locked(results_dir / ".leaderboard.lock"):
        rows = load_rows(results_dir, report)
        extra = sorted({key for r in rows for key in r} - set(COLUMNS))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS + extra)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(target, buffer.getvalue())
    return target


def markdown(rows: list[dict], columns: list[str] = MARKDOWN_COLUMNS) -> str:
    """Rows sorted by % recovered (best first) as a Markdown table."""
    def key(r):
        value = r.get("pct_recovered")
        return -(value if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf)

    def cell(value):
        if value is None or value == "":
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in sorted(rows, key=key)]
    return "\n".join(lines)


def interval_kind(rows: list[dict], column: str = "pct_recovered") -> str:
    """What the [lo, hi] of `cell_value` over these rows' cells is, in words (for captions)."""
    kinds = {v.kind for members in cells(rows, ("student", "init", "stages")).values()
             if (v := cell_value(members, column))}
    if kinds <= {"bootstrap"}:
        return "95% bootstrap intervals over items, spanning the seeds"
    if "bootstrap" not in kinds:
        return "min–max over seeds (records without per-item results)"
    return "95% bootstrap intervals where the records have items, else min–max over seeds"


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m bench.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    if not (args.results_dir / "runs").is_dir():
        print(f"error: {args.results_dir / 'runs'} does not exist; run `python -m bench.run` first", file=sys.stderr)
        return 2
    target = rebuild(args.results_dir)
    print(markdown(load_rows(args.results_dir, report=lambda message: None)))
    print(f"\nwrote {target.name} ({len(load_rows(args.results_dir, lambda m: None))} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
