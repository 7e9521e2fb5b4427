"""Did the object move, and what did the edit cost? Per-edit scores, numpy only.

The labeler of the task runs on the edited image; its map is compared with the target (the
original image's label, translated) and with where the object was.

* Saliency: ΔDice = Dice(edited mask, target) - Dice(original mask, target), and the
  displacement ratio: the move of the mask's centroid projected on the intended offset,
  divided by the offset's squared length (1 = moved all the way, 0 = stayed, < 0 = moved the
  other way; undefined for the identity target or an empty mask).
* Depth: ΔSpearman against the translated map. Spearman compares ranks, so it needs no fit; a
  per-image scale-and-shift fit (least squares, as for relative depth) is made for ΔRMSE,
  reported in units of the target's standard deviation.
* Every edit: PSNR of the edited image against the original, and the relative size of the
  activation edit ||Δ|| / ||a|| over all edited (layer, step) sites.
"""

from __future__ import annotations

import numpy as np

from ..core import metrics
from .targets import Offset, translated_label


def centroid(mask: np.ndarray) -> np.ndarray | None:
    """(row, column) centre of mass of a boolean mask, None when it is empty."""
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    if rows.size == 0:
        return None
    return np.array([rows.mean(), cols.mean()])


def displacement_ratio(original: np.ndarray, edited: np.ndarray, offset: Offset) -> float:
    """The centroid's move projected on ``offset``, over |offset|^2; nan when undefined."""
    intended = np.array([offset.dy, offset.dx], dtype=np.float64)
    before, after = centroid(original), centroid(edited)
    if before is None or after is None or offset.is_identity:
        return float("nan")
    return float((after - before) @ intended / (intended @ intended))


def saliency_scores(original: np.ndarray, edited: np.ndarray, offset: Offset) -> dict:
    """Scores of one edit from boolean masks of the original and the edited image."""
    original, edited = np.asarray(original, bool), np.asarray(edited, bool)
    target = translated_label("binary", original, offset).astype(bool)
    dice_original = metrics.dice(original, target)
    dice_edited = metrics.dice(edited, target)
    return {
        "dice_edited": dice_edited,
        "dice_original": dice_original,
        "delta_dice": dice_edited - dice_original,
        "displacement": displacement_ratio(original, edited, offset),
    }


def fit_scale_shift(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``a * prediction + b`` with a, b minimising the squared error to ``target``."""
    x = np.asarray(prediction, np.float64).ravel()
    y = np.asarray(target, np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, y, rcond=None)
    return (scale * np.asarray(prediction, np.float64) + shift).reshape(np.shape(prediction))


def fitted_rmse(prediction: np.ndarray, target: np.ndarray) -> float:
    """RMSE after the scale-and-shift fit, in units of the target's standard deviation."""
    spread = float(np.std(np.asarray(target, np.float64)))
    error = metrics.rmse(fit_scale_shift(prediction, target), target)
    return error / spread if spread > 0 else float("nan")


def depth_scores(original: np.ndarray, edited: np.ndarray, offset: Offset) -> dict:
    """Scores of one edit from the depth maps of the original and the edited image."""
    target = translated_label("continuous", original, offset)
    spearman_original = metrics.spearman(original, target)
    spearman_edited = metrics.spearman(edited, target)
    rmse_original = fitted_rmse(original, target)
    rmse_edited = fitted_rmse(edited, target)
    return {
        "spearman_edited": spearman_edited,
        "spearman_original": spearman_original,
        "delta_spearman": spearman_edited - spearman_original,
        "delta_rmse": rmse_edited - rmse_original,
    }


TASK_SCORES = {"binary": saliency_scores, "continuous": depth_scores}
# The score a success threshold applies to, per task kind.
SUCCESS_SCORE = {"binary": "displacement", "continuous": "delta_spearman"}


def relative_edit(delta_squares: float, activation_squares: float) -> float:
    """||Δ|| / ||a|` from the summed squares over every edited site."""
    return float(np.sqrt(delta_squares / activation_squares)) if activation_squares else np.nan
