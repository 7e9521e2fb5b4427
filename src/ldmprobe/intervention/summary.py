"""Means with bootstrap intervals over images, per (task, condition, score), and the edit's
effect beside each control's as paired differences.

Trials of one image share its prompt, seed and label, so they are not independent draws: each
image's trials are averaged first and the interval resamples images (``metrics.summarise``).
A difference pairs the experiment and a control on the same image: the difference of their
per-image means (a control may run fewer trials: the identity target has one offset only).
"""

from __future__ import annotations

import pandas as pd

from ..core import metrics
from .conditions import EXPERIMENT

IMAGE = ["prompt_id", "seed"]
COLUMNS = ["task", "condition", "minus", "metric", "mean", "ci_low", "ci_high", "n_images"]
COLUMNS += ["n_edits"]


def _per_image(values: pd.DataFrame) -> pd.Series:
    """values: one row per edit with IMAGE columns and ``value`` -> the mean of each image."""
    return values.groupby(IMAGE, sort=True)["value"].mean()


def _summary(per_image: pd.Series, n_edits: int, settings: dict) -> dict:
    summary = metrics.summarise(
        per_image.to_numpy(),
        settings.get("bootstrap_resamples", 1000),
        settings.get("ci_level", 0.95),
        settings.get("seed", 0),
    )
    return {
        "mean": summary["mean"],
        "ci_low": summary["ci_low"],
        "ci_high": summary["ci_high"],
        "n_images": summary["n"],
        "n_edits": n_edits,
    }


def summarise_edits(edits: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """``edits``: tidy per-edit scores (EDIT columns, task, condition, metric, value);
    ``settings``: the config's ``metrics`` section (bootstrap resamples, level, seed).
    Rows with ``minus`` empty: a condition's mean; else the experiment minus that control."""
    rows = []
    for (task, metric), group in edits.groupby(["task", "metric"], sort=True):
        means, counts = {}, {}
        for condition, values in group.groupby("condition", sort=True):
            means[condition] = _per_image(values)
            counts[condition] = int(values["value"].notna().sum())
            rows.append(
                {
                    "task": task,
                    "condition": condition,
                    "minus": "",
                    "metric": metric,
                    **_summary(means[condition], counts[condition], settings),
                }
            )
        if EXPERIMENT not in means:
            continue
        for control in sorted(set(means) - {EXPERIMENT}):
            difference = (means[EXPERIMENT] - means[control]).dropna()
            rows.append(
                {
                    "task": task,
                    "condition": EXPERIMENT,
                    "minus": control,
                    "metric": metric,
                    **_summary(difference, counts[EXPERIMENT] + counts[control], settings),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
