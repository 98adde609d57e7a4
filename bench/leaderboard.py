"""`results/leaderboard.csv`, regenerated from the run records in `results/runs/*.json`.

The CSV is derived data: rebuilding it from the records is idempotent, and a lock plus an atomic rename
keep concurrent runs from tearing it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
from contextlib import contextmanager
from pathlib import Path

from bench.io import atomic_write_text

IDENTITY = ["run", "teacher", "student", "init", "stages", "tokens", "seed", "preset"]
TAIL = ["params_student", "params_teacher", "state_bytes_per_layer", "seconds", "device", "device_name",
        "torch_threads", "torch", "python", "commit", "date"]


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flat(prefix: str, values: dict) -> dict:
    return {f"{prefix}{key}": value for key, value in values.items() if not isinstance(value, (dict, list))}


def throughput_columns(sweep: dict) -> dict:
    """Student and teacher speed at the longest measured length / context (the short sweep of a run)."""
    out = {}
    for section, name in (("prefill_tokens_per_s", "prefill_tok_s"), ("train_tokens_per_s", "train_tok_s"),
                          ("decode_ms_per_token", "decode_ms")):
        for role in ("student", "teacher"):
            values = sweep.get(section, {}).get(role) or {}
            if values:
                longest = max(values, key=int)
                out[f"{role}_{name}_{longest}"] = round(values[longest], 3)
    state = sweep.get("state_bytes_per_sequence") or {}
    if state:
        out["state_bytes_per_sequence"] = state[max(state, key=int)]
    kv = sweep.get("kv_cache_bytes_per_sequence") or {}
    if kv:
        longest = max(kv, key=int)
        out[f"teacher_kv_bytes_{longest}"] = kv[longest]
    return out


def row(record: dict) -> dict:
    """One leaderboard row: identity, scores, % recovered, throughput, size, machine."""
    settings, machine = record["settings"], record["machine"]
    evaluation = record.get("evaluation") or {}
    throughput = record.get("throughput") or {}
    out = {"run": record["run"], "teacher": "+".join(settings["teachers"]), "student": settings["student"],
           "init": settings["init"], "stages": "+".join(settings["stages"]), "tokens": settings["tokens"],
           "seed": settings["seed"], "preset": settings["preset"]}
    out.update({k: round(v, 6) if isinstance(v, float) else v for k, v in record["metrics"].items()})
    out.update(_flat("student_", evaluation.get("student", {})))
    out.update(_flat("teacher_", evaluation.get("teacher", {})))
    out.update(_flat("recovered_", evaluation.get("recovered", {})))
    out.update(throughput_columns(throughput))
    out.update({"params_student": record["params"]["student"], "params_teacher": record["params"]["teacher"],
                "state_bytes_per_layer": max(record["state_bytes_per_layer"]), "seconds": record["seconds"],
                **{k: machine.get(k) for k in ("device", "device_name", "torch_threads", "torch", "python", "commit")},
                "date": record["date"]})
    return out


def rebuild(results_dir: Path) -> Path:
    """Rewrite the CSV from every record; columns are the union, identity first, machine last."""
    results_dir = Path(results_dir)
    target = results_dir / "leaderboard.csv"
    with locked(results_dir / ".leaderboard.lock"):
        rows = [row(json.loads(p.read_text())) for p in sorted((results_dir / "runs").glob("*.json"))]
        middle = sorted({key for r in rows for key in r} - set(IDENTITY) - set(TAIL))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=IDENTITY + middle + TAIL, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(target, buffer.getvalue())
    return target
