"""The per-image activation store: Zarr v3, one array per (source, CFG half, layer).

Arrays are shaped [steps, tokens, channels] and chunked one step per chunk, so a probe cell
(layer, step) reads exactly one chunk from each image's store. Each store has one writer, the
generation job of its image, which writes it under a temporary name and renames it when
complete. Steps that the study does not read (``generation.store``) are never written: their
chunks are absent, and the array's ``stored_steps`` attribute lists the ones that are there.

Activations are float16, or 8-bit with ``generation.codec.quantise`` (``int8-token``: one
scale per token, ``int8-channel``: one per channel, each the absolute maximum / 127, symmetric):
the int8 values under the array's own path, the float16 scales beside them under
``scales/<path>``, chunked per step alike. The int8 values of ``int8-channel`` are stored
channel-major ([steps, channels, tokens]: each channel's values, of one scale and similar
magnitude, contiguous in the chunk, which compresses them better), those of ``int8-token``
token-major ([steps, tokens, channels], as float16); the array's ``layout`` attribute says
which (absent: token-major, the stores written before the attribute). ``write_chunk``
quantises (and transposes) and ``read_chunk`` dequantises to float16 [tokens, channels]: the
only two places that know.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from ..core.io import pause_point, rerun_advice

# generation.codec.quantise: the axis over which one scale is shared (tokens, channels).
QUANTISERS = {"none": None, "int8-token": -1, "int8-channel": 0}
INT8_MAX = 127
# The order of an 8-bit array's dimensions after the step (its ``layout`` attribute).
TOKEN_MAJOR, CHANNEL_MAJOR = "token-major", "channel-major"
LAYOUTS = {"int8-token": TOKEN_MAJOR, "int8-channel": CHANNEL_MAJOR}


class StoreError(RuntimeError):
    """An activation store is missing or unreadable; the message says how to heal it."""


def array_path(source: str, half: str, layer: str) -> str:
    return f"{source}/{half}/{layer}"


def scales_path(path: str) -> str:
    return f"scales/{path}"


def quantise(values: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """[tokens, channels] -> int8 values and float16 scales ([tokens, 1] or [1, channels]).

    The scales are float16 (their 11-bit precision is far finer than an 8-bit step) and the
    values are rounded against the stored, rounded scale."""
    axis = QUANTISERS[scheme]
    values = values.astype(np.float32)
    scale = (np.abs(values).max(axis=axis, keepdims=True) / INT8_MAX).astype(np.float16)
    # An all-zero token or channel: any scale reproduces it; 1 avoids dividing by zero.
    scale[scale == 0] = 1.0
    quantised = np.rint(values / scale.astype(np.float32))
    return np.clip(quantised, -INT8_MAX, INT8_MAX).astype(np.int8), scale


def dequantise(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 values [tokens, channels] (any memory order) times their scales: float16, C-order."""
    product = values.astype(np.float32) * scale.astype(np.float32)
    return np.ascontiguousarray(product.astype(np.float16))


def make_codecs(codec: dict, typesize: int = 2) -> dict:
    """Zarr v3 codec arguments for ``generation.codec`` of the config (name and level), for
    elements of ``typesize`` bytes."""
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
                    typesize=typesize,
                )
            ]
        }
    raise ValueError(f"storage.codec.name: unknown codec {name!r}")


class ActivationWriter:
    """Writes activation chunks from a background thread so the GPU keeps denoising.

    ``put`` queues the array (or drops it: a step not stored) and returns; ``close`` waits
    for every write and re-raises the first error a write hit. ``max_pending=0`` writes
    synchronously inside ``put`` (the baseline that ``bench/bench_dump.py`` compares the
    thread against).
    """

    def __init__(self, group, max_pending: int = 64, stored_steps: dict | None = None):
        self._group = group
        # Per array path, the steps written (``generation.store``); other steps are dropped.
        self._stored = {path: set(steps) for path, steps in (stored_steps or {}).items()}
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
        write_chunk(self._group, path, step, values)
        # The crash tests' kill point for a store that holds some chunks but not all.
        pause_point("chunk-written", f"{path}/{step}")

    def put(self, path: str, step: int, values: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if path in self._stored and step not in self._stored[path]:
            return
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


def create_store(
    path: Path,
    arrays: dict[str, tuple[tuple[int, ...], str]],
    codec: dict,
    stored_steps: dict[str, list[int]] | None = None,
):
    """Create a store with ``arrays`` ({path: (shape, dtype)}), chunked per leading index.
    ``stored_steps``: per array path, the steps that will be written (recorded in the array's
    ``stored_steps`` attribute; absent: all).

    The float16 arrays (the activations) are stored as 8-bit values with their scales when
    ``codec`` asks for it (``quantise``); other dtypes (the latents) are stored as they are.
    """
    import zarr

    group = zarr.open_group(str(path), mode="w")
    scheme = codec.get("quantise", "none")
    stored_steps = stored_steps or {}
    for name, (shape, dtype) in arrays.items():
        chunks = (1, *shape[1:])
        attributes = {}
        if name in stored_steps:
            attributes["stored_steps"] = [int(step) for step in stored_steps[name]]
        if dtype != "float16" or QUANTISERS[scheme] is None:
            typesize = np.dtype(dtype).itemsize
            group.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                attributes=attributes,
                **make_codecs(codec, typesize),
            )
            continue
        attributes["quantise"] = scheme
        attributes["layout"] = LAYOUTS[scheme]
        if attributes["layout"] == CHANNEL_MAJOR:
            shape, chunks = (shape[0], *shape[1:][::-1]), (1, *chunks[1:][::-1])
        group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype="int8",
            attributes=attributes,
            **make_codecs(codec, 1),
        )
        # Per step, the shape of quantise()'s scales for a [tokens, channels] chunk.
        step_shape = list(arrays[name][0][1:])
        step_shape[QUANTISERS[scheme]] = 1
        scale_shape = (shape[0], *step_shape)
        group.create_array(
            scales_path(name),
            shape=tuple(scale_shape),
            chunks=(1, *scale_shape[1:]),
            dtype="float16",
            **make_codecs(codec, 2),
        )
    return group


def write_chunk(group, path: str, step: int, values: np.ndarray) -> None:
    """One step of one array, quantised if the array is 8-bit."""
    array = group[path]
    scheme = array.attrs.get("quantise")
    if scheme is None:
        array[step] = values
        return
    quantised, scale = quantise(values, scheme)
    group[scales_path(path)][step] = scale
    array[step] = quantised.T if layout(array) == CHANNEL_MAJOR else quantised


def layout(array) -> str:
    """The 8-bit ``array``'s layout (``token-major`` where the attribute is absent: stores
    written before it); an unknown one raises, so a reader never misreads the values."""
    name = array.attrs.get("layout", TOKEN_MAJOR)
    if name not in (TOKEN_MAJOR, CHANNEL_MAJOR):
        raise ValueError(f"8-bit array {array.path!r} has an unknown layout {name!r}")
    return name


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
            f"configuration, or a layer that config key 'generation.store' leaves out?); "
            f"{rerun_advice(store_path, producer)}"
        ) from error
    try:
        values = array[step]
        scheme = array.attrs.get("quantise")
        scale = None if scheme is None else group[scales_path(path)][step]
        if scheme is not None and layout(array) == CHANNEL_MAJOR:
            values = values.T  # [channels, tokens] -> [tokens, channels]
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
    stored = array.attrs.get("stored_steps")
    if chunk_absent and stored is not None and step not in stored:
        raise StoreError(
            f"activation store {store_path} does not hold step {step} of {path!r}: it stores "
            f"steps {stored} of it (config key 'generation.store'); set generation.store to "
            "hold it (this reruns generation)"
        )
    if chunk_absent:
        raise StoreError(
            f"activation store {store_path} is incomplete: chunk {step} of {path!r} is missing; "
            f"{rerun_advice(store_path, producer)}"
        )
    return values if scale is None else dequantise(values, scale)
