"""Figures of the intervention (matplotlib, Agg): per-condition distributions of the scores,
success against the size of the edit, and per-example grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..reporting.figures import _save  # noqa: E402

SCORE_LABELS = {
    "delta_dice": "ΔDice (edited − original, vs target)",
    "displacement": "displacement ratio (1 = moved all the way)",
    "delta_spearman": "ΔSpearman (edited − original, vs target)",
    "delta_rmse": "ΔRMSE after scale-and-shift fit (target SDs)",
    "psnr": "PSNR vs original (dB)",
    "relative_edit": "‖Δ‖ / ‖a‖",
}
TASK_PANELS = {
    "saliency": ["delta_dice", "displacement", "psnr"],
    "depth": ["delta_spearman", "delta_rmse", "psnr"],
}
SUCCESS_OF = {"saliency": "displacement", "depth": "delta_spearman"}


def _conditions(edits: pd.DataFrame) -> list[str]:
    from .conditions import CONDITIONS

    present = set(edits["condition"])
    return [name for name in CONDITIONS if name in present]


def distributions(edits: pd.DataFrame, task: str, path: str | Path) -> None:
    """One panel per score: every edit as a dot per condition, with the condition's mean."""
    panels = TASK_PANELS[task]
    conditions = _conditions(edits)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, metric in zip(np.atleast_1d(axes), panels, strict=True):
        for position, condition in enumerate(conditions):
            values = edits[(edits.metric == metric) & (edits.condition == condition)]["value"]
            values = values[np.isfinite(values)]
            jitter = rng.uniform(-0.15, 0.15, len(values))
            ax.scatter(position + jitter, values, s=12, alpha=0.6)
            if len(values):
                ax.hlines(values.mean(), position - 0.3, position + 0.3, color="black")
        ax.set_xticks(range(len(conditions)), conditions, rotation=20, fontsize=8)
        ax.set_ylabel(SCORE_LABELS.get(metric, metric), fontsize=8)
        if metric.startswith("delta_") or metric == "displacement":
            ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{task}: the edit beside its controls (dots: edits; bars: means)", fontsize=10)
    _save(fig, path)


def success_vs_edit(edits: pd.DataFrame, task: str, threshold: float, path: str | Path) -> None:
    """The success score of every edit against its relative size ‖Δ‖/‖a‖, per condition."""
    metric = SUCCESS_OF[task]
    wide = edits.pivot_table(
        index=["prompt_id", "seed", "trial", "condition"], columns="metric", values="value"
    ).reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for condition in _conditions(edits):
        rows = wide[wide.condition == condition]
        ax.scatter(rows["relative_edit"], rows[metric], s=14, alpha=0.7, label=condition)
    ax.axhline(threshold, color="black", ls="--", lw=0.8, label=f"success ≥ {threshold:g}")
    ax.set_xlabel(SCORE_LABELS["relative_edit"] + " over the edited sites")
    ax.set_ylabel(SCORE_LABELS[metric], fontsize=8)
    ax.set_title(f"{task}: success against the size of the edit", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def example_grid(rows: list[dict], steps: list[int], task: str, path: str | Path) -> None:
    """Per (image, condition): original | target | edited | labeler on edited | previews.

    ``rows``: {"title", "original" [H,W,3], "target" [H,W], "edited" [H,W,3], "labelled"
    [H,W], "previews": [H,W,3] per step of ``steps``}.
    """
    fixed = ["original", "target", "edited", "labeler on edited"]
    n_cols = len(fixed) + len(steps)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.15 * n_cols, 1.3 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, row in enumerate(rows):
        line = axes[r]
        line[0].imshow(row["original"])
        line[1].imshow(row["target"], cmap="magma")
        line[2].imshow(row["edited"])
        line[3].imshow(row["labelled"], cmap="magma")
        for c, preview in enumerate(row["previews"]):
            line[len(fixed) + c].imshow(preview)
        line[0].set_ylabel(row["title"], fontsize=6)
        if r == 0:
            titles = fixed + [f"x0 step {step}" for step in steps]
            for ax, title in zip(line, titles, strict=True):
                ax.set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{task}: moving the object through the probe (trial 0 of each)", fontsize=9)
    _save(fig, path)


def preview_steps(edited_steps: list[int], calls: int) -> list[int]:
    """The previews shown: every edited step, then the middle and the last step."""
    return sorted({*edited_steps, calls // 2, calls - 1})
