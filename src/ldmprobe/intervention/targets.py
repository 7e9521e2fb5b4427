"""The intervention's target: the image's own label, translated (Chen et al.'s recipe).

The offset is drawn on each axis from [-120, -90) or [90, 120) pixels at 512 px (17-23 % of
the side) and scaled to the label's size. Masks: the vacated area becomes background. Depth:
the vacated strip repeats the translated map's edge; the reference then min-max scales the
map to [0, 1], times 18, minus 9, in the probe's output units (``reference_depth_units``).
Numpy only: the scoring side imports it without torch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

REFERENCE_SIZE = 512
OFFSET_RANGE = (90, 120)  # pixels at REFERENCE_SIZE, magnitude on each axis, high exclusive
# The reference's depth target: min-max scaled to [0, 1], then x 18 - 9.
REFERENCE_DEPTH_SPAN = (-9.0, 9.0)


@dataclass(frozen=True)
class Offset:
    """A translation in pixels of the label: ``dy`` rows (down > 0), ``dx`` columns (right > 0)."""

    dy: int
    dx: int

    @property
    def is_identity(self) -> bool:
        return self.dy == 0 and self.dx == 0


IDENTITY = Offset(0, 0)


def offset_range(size: int, reference=OFFSET_RANGE) -> tuple[int, int]:
    """The offset magnitudes [low, high) in pixels at ``size``: the reference's range scaled
    from 512 px and rounded (at least one value)."""
    low = round(reference[0] * size / REFERENCE_SIZE)
    high = max(low + 1, round(reference[1] * size / REFERENCE_SIZE))
    return low, high


def draw_offset(rng: np.random.Generator, height: int, width: int) -> Offset:
    """A random offset: per axis (rows, then columns) a magnitude in ``offset_range`` and a
    sign, each equally likely."""
    values = []
    for size in (height, width):
        low, high = offset_range(size)
        magnitude = int(rng.integers(low, high))
        values.append(magnitude if rng.integers(0, 2) else -magnitude)
    return Offset(*values)


def trial_rng(seed: int, prompt_id: str, image_seed: int, trial: int) -> np.random.Generator:
    """The generator of one (image, trial): fixed by the config seed and the image's key, so a
    trial's offset never depends on which other images or trials run."""
    key = [seed, zlib.crc32(prompt_id.encode()), image_seed % 2**32, image_seed // 2**32, trial]
    return np.random.default_rng(np.random.SeedSequence(key))


def _source_indices(size: int, shift: int) -> np.ndarray:
    """For each output position, the input position it comes from (may fall outside)."""
    return np.arange(size) - shift


def translate(array: np.ndarray, offset: Offset, fill: float | None) -> np.ndarray:
    """``array`` (last two axes H, W) moved by ``offset``. The vacated area takes ``fill``,
    or with ``fill=None`` repeats the translated map's nearest edge row or column."""
    array = np.asarray(array)
    height, width = array.shape[-2:]
    rows = _source_indices(height, offset.dy)
    cols = _source_indices(width, offset.dx)
    moved = array.take(np.clip(rows, 0, height - 1), axis=-2).take(
        np.clip(cols, 0, width - 1), axis=-1
    )
    if fill is None:
        return moved
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    return np.where(inside, moved, np.asarray(fill, dtype=array.dtype))


def translated_label(kind: str, label: np.ndarray, offset: Offset) -> np.ndarray:
    """The target in label units: a mask's vacated area is background (0), a continuous map's
    vacated strip is edge-replicated."""
    if kind == "binary":
        return translate(label, offset, fill=0.0)
    if kind == "continuous":
        return translate(label, offset, fill=None)
    raise ValueError(f"unknown task kind {kind!r}; expected 'binary' or 'continuous'")


def reference_depth_units(depth: np.ndarray) -> np.ndarray:
    """The reference's depth target: min-max scaled to [0, 1], then to [-9, 9]."""
    depth = np.asarray(depth, dtype=np.float64)
    low, span = depth.min(), depth.max() - depth.min()
    unit = (depth - low) / span if span > 0 else np.zeros_like(depth)
    lower, upper = REFERENCE_DEPTH_SPAN
    return (unit * (upper - lower) + lower).astype(np.float32)


def probe_units(
    kind: str, target: np.ndarray, scaling: str, target_mean: float, target_std: float
) -> np.ndarray:
    """The translated target in the units the probe's loss compares its output with.

    Masks stay 0/1. Continuous maps: ``reference`` (Chen et al.'s [-9, 9] min-max scaling) or
    ``probe`` (the probe's own training scaling, (x - mean) / std, so the target asks for a
    map of the size the probe saw in training)."""
    if kind == "binary":
        return np.asarray(target, dtype=np.float32)
    if scaling == "reference":
        return reference_depth_units(target)
    if scaling == "probe":
        return ((np.asarray(target, np.float64) - target_mean) / target_std).astype(np.float32)
    raise ValueError(f"unknown depth target scaling {scaling!r}; expected 'reference' or 'probe'")


def depth_condition(kind: str, target: np.ndarray) -> np.ndarray | None:
    """The translated target as the depth map Stable Diffusion 2 depth is conditioned on, in
    its depth estimator's convention (relative inverse depth, larger = nearer; the pipeline
    min-max scales it to [-1, 1]): a depth label as it is (the depth labels are relative
    inverse depth), a mask as a depth-like map (the object 1, near; the background 0, far).
    None when the map is flat (an empty or a full mask): it has no layout to condition on,
    and the pipeline's min-max scaling of it is undefined."""
    if kind not in ("binary", "continuous"):
        raise ValueError(f"unknown task kind {kind!r}; expected 'binary' or 'continuous'")
    condition = np.asarray(target, dtype=np.float32)
    if not np.all(np.isfinite(condition)) or condition.max() <= condition.min():
        return None
    return condition
