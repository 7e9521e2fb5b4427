"""The per-image activation store: Zarr v3, one array per (source, CFG half, layer).

Arrays are shaped [steps, tokens, channels] in float16 and chunked one step per chunk, so a
probe cell (layer, step) reads exactly one chunk from each image's store. Each store has one
writer, the generation job of its image, which writes it under a temporary name and renames it
when complete.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from .io import pause_point, rerun_advice


class StoreError(RuntimeError):
    """An activation store is missing or unreadable; the message says how to heal it."""


def array_path(source: str, half: str, layer: str) -> str:
    return f"{source}/{half}/{layer}"


def make_codecs(codec: dict) -> dict:
    """Zarr v3 codec arguments for ``storage.codec`` of the config."""
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    name = codec.get("name", "blosc-zstd")
    level = int(codec.get("level", 3))
    if name == "none":
        return {"compressors": None}
    if name == "zstd":
        return {"compressors": [ZstdCodec(level=level)]}
    if name.startswith("blosc-"):
        return {
            "compressors": [
                BloscCodec(
                    cname=name.removeprefix("blosc-"),
                    clevel=level,
                    shuffle=BloscShuffle.bitshuffle,
                    typesize=2,
                )
            ]
        }
    raise ValueError(f"storage.codec.name: unknown codec {name!r}")


class ActivationWriter:
    """Writes activation chunks from a background thread so the GPU keeps denoising.

    ``put`` queues the array and returns; ``close`` waits for every write and re-raises the
    first error a write hit. ``max_pending=0`` writes synchronously inside ``put`` (the
    baseline that ``bench/bench_dump.py`` compares the thread against).
    """

    def __init__(self, group, max_pending: int = 64):
        self._group = group
        self._error: BaseException | None = None
        self._thread = None
        if max_pending > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._run, name="zarr-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            path, step, values = item
            if self._error is None:
                try:
                    self._write(path, step, values)
                except BaseException as error:  # re-raised in close()
                    self._error = error

    def _write(self, path: str, step: int, values: np.ndarray) -> None:
        self._group[path][step] = values
        # The crash tests' kill point for a store that holds some chunks but not all.
        pause_point("chunk-written", f"{path}/{step}")

    def put(self, path: str, step: int, values: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._write(path, step, values)
            return
        self._queue.put((path, step, values))

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def create_store(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]], codec: dict):
    """Create a store with ``arrays`` ({path: (shape, dtype)}), chunked per leading index."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    codecs = make_codecs(codec)
    for name, (shape, dtype) in arrays.items():
        group.create_array(name, shape=shape, chunks=(1, *shape[1:]), dtype=dtype, **codecs)
    return group


def open_store(path: str | Path, producer: str = "generate"):
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"activation store {path} is missing or incomplete; {rerun_advice(path, producer)}"
        )
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as error:
        raise StoreError(
            f"activation store {path} is corrupt: cannot open it ({type(error).__name__}: "
            f"{error}); {rerun_advice(path, producer)}"
        ) from error


def read_chunk(
    group, path: str, step: int, store_path: str | Path, producer: str = "generate"
) -> np.ndarray:
    """One step of one array; a corrupt or missing chunk raises StoreError naming the store."""
    try:
        array = group[path]
    except KeyError as error:
        raise StoreError(
            f"activation store {store_path} has no array {path!r} (made with another "
            f"configuration?); {rerun_advice(store_path, producer)}"
        ) from error
    try:
        values = array[step]
    except Exception as error:
        raise StoreError(
            f"activation store {store_path} is corrupt: cannot read {path!r} step {step} "
            f"({type(error).__name__}: {error}); {rerun_advice(store_path, producer)}"
        ) from error
    # Zarr returns the fill value for a chunk file that is absent: a truncated store.
    # (The files of step ``step`` lie under c/<step>/, one per chunk of the other dimensions.)
    chunk_absent = not np.any(values) and not any(
        entry.is_file() for entry in Path(store_path, path, "c", str(step)).rglob("*")
    )
    if chunk_absent:
        raise StoreError(
            f"activation store {store_path} is incomplete: chunk {step} of {path!r} is missing; "
            f"{rerun_advice(store_path, producer)}"
        )
    return values
