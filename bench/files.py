"""Atomic file writes and locks: a reader never sees a torn file, a crash never loses the previous one, and
two processes never write the same output at once."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def previous_version(target: str | os.PathLike) -> Path:
    """Where `atomic_directory` parks the old directory during the swap (a crash can leave it there)."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


@contextmanager
def atomic_directory(target: str | os.PathLike):
    """Yield an empty staging directory beside `target`; when the block succeeds it replaces `target`.

    A failure inside the block leaves `target` untouched; readers never see a half-written directory.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    old = previous_version(target)
    try:
        yield staging
        for path in [staging, *staging.rglob("*")]:  # mkdtemp makes it private; results are shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clear_staging(target: str | os.PathLike) -> None:
    """Remove the staging directories `atomic_directory` left beside `target` when a process was killed inside
    the block (call it while holding the lock on their parent, so no live writer owns them)."""
    target = Path(target)
    for leftover in target.parent.glob(f".{target.name}-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def locked(path: str | os.PathLike):
    """Hold an exclusive lock on `path` (created if needed) for the block; waits for another holder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def exclusive(path: str | os.PathLike):
    """Hold an exclusive lock on `path` for the block, or raise `Busy` at once if another process holds it.
    The lock dies with its process, so a killed run never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
