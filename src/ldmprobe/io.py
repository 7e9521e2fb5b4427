"""Atomic, deterministic writes: a reader never sees a half-written file or directory."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _remove_stale_temporaries(path: Path) -> None:
    # A writer killed mid-write (SIGKILL, node failure) leaves its temporary behind, and no
    # workflow rule owns it. Each output has one writer at a time, so any earlier temporary of
    # this path is garbage by the time a new writer starts.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _temporary_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", suffix=suffix, dir=path.parent))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, frame) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
