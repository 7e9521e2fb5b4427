"""Atomic, deterministic writes: a reader never sees a half-written file or directory.

Every output is written under a temporary sibling name and renamed when complete. A killed
writer leaves only its temporary, which the next writer of that path removes.

Crash tests need to kill a job at an exact point rather than after a guessed delay, so the
writes pass named pause points (:func:`pause_point`): ``before-rename`` (the temporary is
complete, the output does not exist yet) and ``after-rename`` (the output exists, the job has
not finished). With ``LDMPROBE_PAUSE_AT=<point>:<glob>`` in the environment, the first write
whose path matches the glob appends a line to the file named by ``LDMPROBE_PAUSE_MARKER`` and
stops its own process with SIGSTOP, for the test to SIGKILL the run. Unset, a pause point is
one environment lookup.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import gzip
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .provenance import VERSION_KEY, package_version

PAUSE_AT = "LDMPROBE_PAUSE_AT"
PAUSE_MARKER = "LDMPROBE_PAUSE_MARKER"


def pause_point(point: str, path: str | Path) -> None:
    """Stop this process here when ``LDMPROBE_PAUSE_AT`` names ``point`` and matches ``path``."""
    wanted = os.environ.get(PAUSE_AT)
    if not wanted:
        return
    name, _, pattern = wanted.partition(":")
    if name != point or not fnmatch.fnmatchcase(str(path), pattern or "*"):
        return
    line = f"{os.getpid()} {point} {path}\n"
    sys.stderr.write(f"ldmprobe: paused at {line}")
    marker = os.environ.get(PAUSE_MARKER)
    if marker:
        with open(marker, "a") as handle:
            handle.write(line)
    os.kill(os.getpid(), signal.SIGSTOP)


def rerun_advice(path: str | Path, producer: str) -> str:
    """How to remake a damaged output: the end of the message that names it."""
    # Deleting the file alone is not enough: Snakemake reruns a job whose output is missing
    # only when a job downstream of it has to run, and the outputs downstream still exist.
    return (
        f"it is made by a '{producer}' job: delete it and run snakemake again with "
        f"--forcerun {path} (that job and everything downstream of it rerun)"
    )


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
        pause_point("before-rename", path)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        pause_point("after-rename", path)
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
        pause_point("before-rename", path)
        os.replace(tmp, path)
        pause_point("after-rename", path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict) -> None:
    """``data`` as JSON with the package version that made it (``ldmprobe.core.provenance``)."""
    with atomic_file(path) as tmp:
        stamped = {**data, VERSION_KEY: package_version()}
        tmp.write_text(json.dumps(stamped, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """``frame`` as CSV; gzip-compressed when ``path`` ends in ``.gz``, with a fixed header
    (no time stamp or file name), so the same table gives the same bytes. Its last column,
    ``ldmprobe_version``, is the package version that wrote the file (replacing that column of
    a table read from another output)."""
    stamped = frame.drop(columns=VERSION_KEY, errors="ignore").assign(
        **{VERSION_KEY: package_version()}
    )
    text = stamped.to_csv(index=False, float_format="%.6g")
    data = text.encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
