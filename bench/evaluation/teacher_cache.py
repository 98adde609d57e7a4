"""A teacher's scores are computed once per (teacher fingerprint, evaluation config) and reused.

`results/teacher_scores/<fingerprint>-<config key>.json` holds the teacher's flat scores and item sets
(`bench.evaluation.items`) with the fingerprint, the config and the machine. The key hashes every config field
that changes what is measured (not batch sizes, nor where the cloze task file is written), the device type
and dtype the teacher runs in, and `FORMAT`. A run reads the file under a lock, so two runs that need the
same teacher wait for the first to write it instead of both evaluating; the write is atomic. A hub id is
its own fingerprint (as in run names); a teacher with an unknown fingerprint is never cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

from bench import provenance
from bench.evaluation import tasks
from bench.files import atomic_write_json, locked

FORMAT = 1  # raise when the scores or items of a config change meaning: old files are then not reused
_NOT_MEASURED = ("batch_size", "max_batch_tokens", "task_dir")


def config_key(config: tasks.EvalConfig, device: str = "cpu", dtype: str = "float32") -> str:
    """Twelve hex digits over what the config measures, the device type, the dtype and FORMAT."""
    measured = {k: v for k, v in asdict(config).items() if k not in _NOT_MEASURED}
    identity = {"config": measured, "device": device, "dtype": dtype, "format": FORMAT}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_path(cache_dir: Path, fingerprint: str, key: str) -> Path:
    return Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', fingerprint)}-{key}.json"


def _model_runs_on(model) -> tuple[str, str]:
    parameter = next(model.parameters())
    return parameter.device.type, str(parameter.dtype).removeprefix("torch.")


def teacher_scores(teacher, tokenizer, config: tasks.EvalConfig, fingerprint: str, cache_dir: Path,
                   progress: bool = True) -> tuple[dict, dict, str | None]:
    """(scores, items, cache file name or None): from the cache when this teacher was evaluated on this
    config before, else evaluated now and written there."""
    if not fingerprint or fingerprint == "unknown":
        return (*tasks.evaluate_with_items(teacher, tokenizer, config, progress), None)
    key = config_key(config, *_model_runs_on(teacher))
    path = cache_path(cache_dir, fingerprint, key)
    with locked(path.with_name(f".{path.name}.lock")):
        cached = _read(path, fingerprint, key)
        if cached is not None:
            return cached["scores"], cached["items"], path.name
        scores, items = tasks.evaluate_with_items(teacher, tokenizer, config, progress)
        atomic_write_json(path, {"teacher_fingerprint": fingerprint, "config_key": key, "config": asdict(config),
                                 "scores": scores, "items": items, "machine": provenance.machine(),
                                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return scores, items, path.name


def _read(path: Path, fingerprint: str, key: str) -> dict | None:
    """The cached entry, or None when absent, torn, or written for another teacher or config."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("teacher_fingerprint") != fingerprint or \
            cached.get("config_key") != key or not isinstance(cached.get("scores"), dict):
        return None
    return {"scores": cached["scores"], "items": cached.get("items") or {}}
