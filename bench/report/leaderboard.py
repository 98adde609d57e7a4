"""`results/leaderboard.csv`, regenerated from the run records in `results/runs/*.json`.

`python -m bench.leaderboard [--results-dir DIR]` rebuilds it and prints it as a Markdown table sorted by
% of the teacher recovered. The CSV is derived data: rebuilding it is idempotent, and a lock plus an
atomic rename keep concurrent runs from tearing it. A malformed record is reported by name and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

from bench.files import atomic_write_text, locked

RECALL_LENGTHS = (256, 512, 1024, 2048, 4096)
COLUMNS = (["run_id", "teacher", "teacher_sha", "student", "init", "stages", "tokens", "seed", "params", "state_bytes",
            "val_ppl", "teacher_val_ppl", "val_kl"] + [f"recall_{n}" for n in RECALL_LENGTHS]
           + ["cloze_acc", "pct_recovered", "prefill_tok_s_2048", "prefill_tok_s_16384", "decode_ms_32768",
              "backend", "device", "dtype", "torch", "commit", "date"])
MARKDOWN_COLUMNS = ["student", "init", "seed", "tokens", "val_ppl", "teacher_val_ppl", "val_kl", "cloze_acc",
                    "pct_recovered", "prefill_tok_s_2048", "decode_ms_32768", "state_bytes"]


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def _at(sweep: dict, section: str, role: str, key: int):
    return (sweep.get(section, {}).get(role) or {}).get(str(key))


def row(record: dict) -> dict:
    """One leaderboard row: the documented columns first, every other score after them."""
    settings, machine, metrics = record["settings"], record["machine"], record["metrics"]
    evaluation = record.get("evaluation") or {}
    student_scores = evaluation.get("student", {})
    throughput = record.get("throughput") or {}
    recall = {}
    for length in RECALL_LENGTHS:
        kinds = [student_scores[k] for k in (f"recall_mqar_{length}", f"recall_passkey_{length}") if k in student_scores]
        recall[f"recall_{length}"] = sum(kinds) / len(kinds) if kinds else None
    out = {
        "run_id": record["run"], "teacher": "+".join(settings["teachers"]),
        "teacher_sha": record.get("teacher_fingerprint"), "student": settings["student"],
        "init": settings["init"], "stages": "+".join(settings["stages"]), "tokens": settings["tokens"],
        "seed": settings["seed"], "params": record["params"]["student"],
        "state_bytes": max(record["state_bytes_per_layer"]) * len(record["state_bytes_per_layer"]),
        "val_ppl": metrics["val_ppl_student"], "teacher_val_ppl": metrics["val_ppl_teacher"],
        "val_kl": metrics["val_kl"], **recall, "cloze_acc": student_scores.get("cloze_acc"),
        "pct_recovered": (evaluation.get("recovered") or {}).get("avg"),
        "prefill_tok_s_2048": _at(throughput, "prefill_tokens_per_s", "student", 2048),
        "prefill_tok_s_16384": _at(throughput, "prefill_tokens_per_s", "student", 16384),
        "decode_ms_32768": _at(throughput, "decode_ms_per_token", "student", 32768),
        "backend": (throughput.get("backend") or {}).get("student"), "device": machine.get("device_name"),
        "dtype": "bf16" if record.get("bf16") else "fp32", "torch": machine.get("torch"),
        "commit": machine.get("commit"), "date": record["date"],
    }
    for prefix, scores in (("student_", student_scores), ("teacher_", evaluation.get("teacher", {})),
                           ("recovered_", evaluation.get("recovered", {}))):
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
    return rows


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
