"""Means with bootstrap intervals over images, per (task, condition, score), and the edit's
effect beside each control's as paired differences.

Trials of one image share its prompt, seed and label, so they are not independent draws: each
image's trials are averaged first and the interval resamples images (``metrics.summarise``).
A difference pairs the experiment and a control on the same image and trial (the same offset).
"""

from __future__ import annotations

import pandas as pd

from .. import metrics
from .conditions import EXPERIMENT

IMAGE = ["prompt_id", "seed"]
EDIT = [*IMAGE, "trial"]
COLUMNS = ["task", "condition", "minus", "metric", "mean", "ci_low", "ci_high", "n_images"]
COLUMNS += ["n_edits"]


def _summarise_edits(values: pd.DataFrame, settings: dict) -> dict:
    """values: one row per edit with IMAGE columns and ``value``."""
    per_image = values.groupby(IMAGE, sort=True)["value"].mean()
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
        "n_edits": int(values["value"].notna().sum()),
    }


def summarise_edits(edits: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """``edits``: tidy per-edit scores (EDIT columns, task, condition, metric, value);
    ``settings``: the config's ``metrics`` section (bootstrap resamples, level, seed)."""
    rows = []
    for (task, condition, metric), group in edits.groupby(
        ["task", "condition", "metric"], sort=True
    ):
        rows.append(
            {
                "task": task,
                "condition": condition,
                "minus": "",
                "metric": metric,
                **_summarise_edits(group, settings),
            }
        )
    indexed = edits.set_index(["task", "metric", "condition", *EDIT])["value"].sort_index()
    for (task, metric), group in edits.groupby(["task", "metric"], sort=True):
        conditions = set(group["condition"])
        if EXPERIMENT not in conditions:
            continue
        experiment = indexed.loc[(task, metric, EXPERIMENT)]
        for control in sorted(conditions - {EXPERIMENT}):
            paired = (experiment - indexed.loc[(task, metric, control)]).dropna()
            difference = paired.rename("value").reset_index()
            rows.append(
                {
                    "task": task,
                    "condition": EXPERIMENT,
                    "minus": control,
                    "metric": metric,
                    **_summarise_edits(difference, settings),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)
