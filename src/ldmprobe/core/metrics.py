"""Per-image probe metrics, bootstrap intervals over images, and the step at which a signal emerges.

Everything here is plain numpy (no torch), so the aggregation stage can run without a GPU stack
and the numbers can be checked against scipy in the tests. Correlations and errors are computed
in float64 whatever the input dtype: float16/float32 sums over a 512 x 512 map lose digits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_same_shape(pred: np.ndarray, target: np.ndarray) -> None:
    if np.shape(pred) != np.shape(target):
        raise ValueError(
            f"prediction and target shapes differ: {np.shape(pred)} vs {np.shape(target)}"
        )


def _valid_pairs(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened float64 copies with every pair where either side is NaN removed."""
    _check_same_shape(pred, target)
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(values.min() == values.max())


def _pearson_of_valid(x: np.ndarray, y: np.ndarray) -> float:
    # Constant input is tested exactly rather than via a zero variance: the float mean of a
    # constant array need not equal its elements, which would leave rounding noise to correlate.
    if x.size < 2 or _is_constant(x) or _is_constant(y):
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    r = (dx @ dy) / np.sqrt((dx @ dx) * (dy @ dy))
    return float(np.clip(r, -1.0, 1.0))


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Foreground Dice 2|A∩B| / (|A| + |B|) of two boolean masks of equal shape.

    When both masks are empty the prediction is exactly right, so the score is 1.0 (rather than
    the undefined 0/0).
    """
    _check_same_shape(pred_mask, true_mask)
    pred_mask = np.asarray(pred_mask)
    true_mask = np.asarray(true_mask)
    # Refuse probabilities or logits: casting them to bool would silently threshold at != 0.
    if pred_mask.dtype != np.bool_ or true_mask.dtype != np.bool_:
        raise TypeError(f"dice needs boolean masks, got {pred_mask.dtype} and {true_mask.dtype}")
    total = int(pred_mask.sum()) + int(true_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, true_mask).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| of two boolean masks of equal shape; 1.0 when both
    are empty (as ``dice``)."""
    _check_same_shape(a, b)
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def pearson(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation over all elements; NaN pairs dropped; nan if either side is constant."""
    return _pearson_of_valid(*_valid_pairs(pred, target))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's rankdata 'average').

    Written with numpy alone: importing scipy.stats costs each probe job half a second.
    """
    _unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    """Spearman correlation over all elements: Pearson of average ranks (ties share a rank).

    NaN pairs are dropped before ranking; nan if either side is constant.
    """
    x, y = _valid_pairs(pred, target)
    if x.size < 2 or _is_constant(x) or _is_constant(y):
        return float("nan")
    return _pearson_of_valid(average_ranks(x), average_ranks(y))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error over all elements; NaN pairs dropped; nan if none remain."""
    x, y = _valid_pairs(pred, target)
    if x.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((x - y) ** 2)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two images of the same shape on the uint8 scale (any
    dtype); inf when identical."""
    _check_same_shape(a, b)
    error = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


# The metrics reported per test image, by task kind (binary: saliency; continuous: depth,
# shading). Figures draw these.
METRICS_OF_KIND = {"binary": ("dice",), "continuous": ("spearman", "pearson", "rmse")}
CONTINUOUS = {"spearman": spearman, "pearson": pearson, "rmse": rmse}
# A continuous map is also scored beyond what image position alone gives away (a fixed
# camera's ground plane makes depth largely a function of the image row), as
# ``<metric>_<variant>`` rows of the same tables:
# - ``objects``: over the image's object regions, the foreground pixels of its label of
#   FOREGROUND_TASK (so only in studies that label it);
# - ``residual``: of prediction and target less the per-position mean of the training set's
#   targets. Subtracting one map from both leaves the RMSE as it is: correlations only.
VARIANTS = {"objects": ("spearman", "pearson", "rmse"), "residual": ("spearman", "pearson")}
FOREGROUND_TASK = "saliency"
LOWER_IS_BETTER = ("rmse",)


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` (a variant too: ``rmse_objects``) is better."""
    return name.split("_", 1)[0] in LOWER_IS_BETTER


def image_metrics(
    task_kind: str,
    pred: np.ndarray,
    target: np.ndarray,
    foreground: np.ndarray | None = None,
    position_mean: np.ndarray | None = None,
) -> dict[str, float]:
    """The metrics reported for one image of a task.

    ``binary``: ``pred`` is the predicted foreground mask (already argmax'ed) -> Dice.
    ``continuous``: Spearman, Pearson and RMSE against the target map; with ``foreground``
    (a boolean mask of the image) also over its pixels (``*_objects``, NaN when it is empty),
    with ``position_mean`` (a map of the target's shape) also of both maps less it
    (``*_residual``); see ``VARIANTS``.
    """
    _check_same_shape(pred, target)
    if task_kind == "binary":
        return {"dice": dice(pred, target)}
    if task_kind != "continuous":
        raise ValueError(f"unknown task kind {task_kind!r}; expected 'binary' or 'continuous'")
    values = {name: CONTINUOUS[name](pred, target) for name in METRICS_OF_KIND["continuous"]}
    if foreground is not None:
        _check_same_shape(foreground, target)
        keep = np.asarray(foreground, dtype=bool)
        for name in VARIANTS["objects"]:
            values[f"{name}_objects"] = CONTINUOUS[name](pred[keep], target[keep])
    if position_mean is not None:
        _check_same_shape(position_mean, target)
        for name in VARIANTS["residual"]:
            values[f"{name}_residual"] = CONTINUOUS[name](
                pred - position_mean, target - position_mean
            )
    return values


def image_rows(image, task: str, values: dict[str, float], **extra) -> list[dict]:
    """Tidy per-image rows (prompt_id, seed, task, metric, value, extra columns) of one
    image's ``image_metrics``; ``image`` is its manifest row."""
    return [
        {
            "prompt_id": image["prompt_id"],
            "seed": image["seed"],
            "task": task,
            "metric": metric,
            "value": value,
            **extra,
        }
        for metric, value in values.items()
    ]


def upsample_nearest(arr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes by an integer factor.

    Only integer factors are supported: then every token covers an exact k x k pixel block and
    nearest interpolation has no rounding convention to disagree about.
    """
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise ValueError(f"need an array with at least 2 dimensions, got shape {arr.shape}")
    if len(out_hw) != 2:
        raise ValueError(f"out_hw must be (height, width), got {tuple(out_hw)}")
    (h, w), (out_h, out_w) = arr.shape[-2:], (int(out_hw[0]), int(out_hw[1]))
    if h == 0 or w == 0 or out_h < h or out_w < w or out_h % h or out_w % w:
        raise ValueError(
            f"cannot upsample {(h, w)} to {(out_h, out_w)}: each output size must be a positive "
            "integer multiple of the input size"
        )
    return np.repeat(np.repeat(arr, out_h // h, axis=-2), out_w // w, axis=-1)


def block_mean(values: np.ndarray, factor: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of a map, nearest-upsampled back to its size:
    the best block-constant map in squared error (with ``weights``: over the weighted pixels;
    a block without weight keeps its plain mean)."""
    h, w = values.shape[0] // factor, values.shape[1] // factor
    blocks = values.reshape(h, factor, w, factor).astype(np.float64)
    means = blocks.mean(axis=(1, 3))
    if weights is not None:
        mass = weights.reshape(h, factor, w, factor).astype(np.float64)
        total = mass.sum(axis=(1, 3))
        weighted = (blocks * mass).sum(axis=(1, 3)) / np.where(total > 0, total, 1.0)
        means = np.where(total > 0, weighted, means)
    return upsample_nearest(means, values.shape)


def best_block_dice(true_mask: np.ndarray, factor: int) -> float:
    """The largest Dice any block-constant mask scores against ``true_mask``: for a given
    number of chosen blocks, those holding the most foreground are best, so the maximum is
    over the prefixes of the blocks sorted by their foreground count."""
    h, w = true_mask.shape[0] // factor, true_mask.shape[1] // factor
    counts = np.sort(true_mask.reshape(h, factor, w, factor).sum(axis=(1, 3)).ravel())[::-1]
    foreground = int(counts.sum())
    if foreground == 0:
        return 1.0  # the empty mask: dice()'s convention for two empty masks
    hits = np.cumsum(counts)
    chosen = np.arange(1, counts.size + 1) * factor * factor
    return float((2.0 * hits / (chosen + foreground)).max())


def grid_ceiling(
    task_kind: str, target: np.ndarray, factor: int, foreground: np.ndarray | None = None
) -> dict[str, float]:
    """What a probe on a token grid ``factor`` times coarser than its label can score at best,
    when its output is nearest-upsampled as the reference's is (every pixel of a token's
    block gets the token's one value): per metric of ``image_metrics`` but the residual ones.

    Dice is the exact maximum over block-constant masks (``best_block_dice``); the
    continuous metrics are those of the block means (over the object pixels for
    ``*_objects``), which maximise Pearson and minimise RMSE exactly; their Spearman is a
    close reference, not a proven maximum."""
    if task_kind == "binary":
        return {"dice": best_block_dice(np.asarray(target, dtype=bool), factor)}
    values = image_metrics(task_kind, block_mean(target, factor), target)
    if foreground is not None:
        keep = np.asarray(foreground, dtype=bool)
        best = block_mean(target, factor, keep)[keep]
        for name in VARIANTS["objects"]:
            values[f"{name}_objects"] = CONTINUOUS[name](best, target[keep])
    return values


def _check_bootstrap_args(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Row r holds the image indices of bootstrap resample r, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _interval_quantiles(level: float) -> tuple[float, float]:
    return (1.0 - level) / 2.0, (1.0 + level) / 2.0


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values (NaNs dropped first).

    A single value has no spread to resample, so its interval is (v, v); no values give
    (nan, nan).
    """
    _check_bootstrap_args(n_resamples, level)
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float(values[0])
    means = values[_resample_indices(values.size, n_resamples, seed)].mean(axis=1)
    low, high = np.quantile(means, _interval_quantiles(level))
    return float(low), float(high)


def summarise(
    values: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """Mean, bootstrap interval and count of the non-NaN per-image values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    low, high = bootstrap_ci(values, n_resamples, level, seed)
    mean = float(values.mean()) if values.size else float("nan")
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": int(values.size)}


def _emergence_indices(curves: np.ndarray, fraction: float, higher_is_better: bool) -> np.ndarray:
    """Per row of ``curves`` [n_curves, n_steps]: index of the emergence step, or -1 if none.

    A step qualifies when it and every later step meet the threshold set by the curve's final
    value; the emergence index is the first qualifying one, i.e. one past the last failure.
    """
    final = curves[:, -1]
    if higher_is_better:
        meets = curves >= (fraction * final)[:, None]
        # A non-positive final score means the probe found nothing, so nothing "emerged".
        defined = final > 0
    else:
        meets = curves <= (final / fraction)[:, None]
        defined = ~np.isnan(final)
    # Comparisons with NaN are False, so NaN steps count as not meeting the threshold.
    fails = ~meets
    n_steps = curves.shape[1]
    last_fail = n_steps - 1 - np.argmax(fails[:, ::-1], axis=1)
    first_ok = np.where(fails.any(axis=1), last_fail + 1, 0)
    # When the final step itself fails (e.g. a negative final error) no step qualifies.
    defined &= first_ok < n_steps
    return np.where(defined, first_ok, -1)


def _check_emergence_args(steps: np.ndarray, n_values: int, fraction: float) -> None:
    if steps.ndim != 1 or steps.size != n_values:
        raise ValueError(f"need one value per step: {steps.size} steps, {n_values} values")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"steps must be strictly ascending, got {steps.tolist()}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")


def emergence_step(
    steps: Sequence[int],
    values: Sequence[float],
    fraction: float = 0.9,
    higher_is_better: bool = True,
) -> int | None:
    """First step from which the metric stays within ``fraction`` of its final value.

    The final value is the one at the last step. For higher-is-better metrics every step from
    the emergence step on must have value >= fraction * final; for lower-is-better metrics
    (RMSE) value <= final / fraction. A later dip below the threshold resets the emergence to
    after the dip. NaN values never meet the threshold. Returns None when the final value
    shows no signal (<= 0 for higher-is-better, or NaN) or when no step qualifies.
    """
    steps = np.asarray(steps)
    curve = np.asarray(values, dtype=np.float64)
    _check_emergence_args(steps, curve.size, fraction)
    if steps.size == 0:
        return None
    index = int(_emergence_indices(curve[None, :], fraction, higher_is_better)[0])
    return None if index < 0 else int(steps[index])


def emergence_step_bootstrap(
    steps: Sequence[int],
    per_image_values: np.ndarray,
    fraction: float = 0.9,
    higher_is_better: bool = True,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Emergence step of the mean curve over images, with a bootstrap interval over images.

    ``per_image_values`` is [n_images, n_steps] with the same images at every step, so each
    resample draws images (not cells) with replacement and reuses that draw for all steps.
    Per-step means ignore NaN entries, as ``summarise`` does. Resamples whose curve has no
    emergence step are left out of the percentile interval; their share is reported as
    ``undefined_fraction``. The interval bounds are empirical (inverted-CDF) quantiles, so they
    are always steps of the grid; they are None when no resample has an emergence step.
    """
    _check_bootstrap_args(n_resamples, level)
    steps = np.asarray(steps)
    values = np.asarray(per_image_values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"per_image_values must be [n_images, n_steps], got shape {values.shape}")
    _check_emergence_args(steps, values.shape[1], fraction)
    n_images = values.shape[0]
    if n_images == 0 or steps.size == 0:
        return {"step": None, "ci_low": None, "ci_high": None, "undefined_fraction": 1.0}

    # A resample's mean curve is a count-weighted mean, so resampling needs only the
    # [n_resamples, n_images] multiplicity matrix, never a [n_resamples, n_images, n_steps] copy.
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    indices = _resample_indices(n_images, n_resamples, seed)
    offsets = (np.arange(n_resamples) * n_images)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=n_resamples * n_images)
    counts = counts.reshape(n_resamples, n_images).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        point_curve = filled.sum(axis=0) / present.sum(axis=0)
        resampled_curves = (counts @ filled) / (counts @ present)

    step = emergence_step(steps, point_curve, fraction, higher_is_better)
    resampled = _emergence_indices(resampled_curves, fraction, higher_is_better)
    defined = resampled[resampled >= 0]
    undefined_fraction = 1.0 - defined.size / n_resamples
    if defined.size == 0:
        return {"step": step, "ci_low": None, "ci_high": None, "undefined_fraction": 1.0}
    low, high = np.quantile(steps[defined], _interval_quantiles(level), method="inverted_cdf")
    return {
        "step": step,
        "ci_low": int(low),
        "ci_high": int(high),
        "undefined_fraction": float(undefined_fraction),
    }
