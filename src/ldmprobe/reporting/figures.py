"""Figures of the study (matplotlib, Agg): heatmaps, curves, probe-vs-labeler comparisons and
the per-step example grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core import metrics  # noqa: E402
from ..core.io import atomic_file  # noqa: E402
from ..core.provenance import png_text  # noqa: E402
from ..generation.sources import LABELER, SOURCES, legend, named  # noqa: E402

METRIC_LABELS = {
    "dice": "Dice",
    "spearman": "Spearman ρ",
    "pearson": "Pearson r",
    "rmse": "RMSE (standardised)",
}


def _save(fig, path: str | Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=png_text())
    plt.close(fig)


def heatmap(summary: pd.DataFrame, task: str, metric: str, source: str, path: str | Path) -> None:
    """Layers (execution order) x steps, coloured by the mean test metric."""
    rows = summary[(summary.task == task) & (summary.metric == metric) & (summary.source == source)]
    grid = rows.pivot_table(index=["layer_order", "layer"], columns="step", values="mean")
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * grid.shape[1], 1.0 + 0.32 * grid.shape[0]))
    cmap = "viridis_r" if metrics.lower_is_better(metric) else "viridis"
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=cmap)
    ax.set_xticks(range(grid.shape[1]), [str(step) for step in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [layer for _order, layer in grid.index])
    ax.set_xlabel("denoising step (denoiser call)")
    ax.set_ylabel("self-attention layer (execution order)")
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=ax, label=METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{task}: test {METRIC_LABELS.get(metric, metric)} per layer and step ({source})")
    _save(fig, path)


def curves(summary: pd.DataFrame, task: str, metric: str, source: str, path: str | Path) -> None:
    """Metric vs step, one line per layer, with the bootstrap interval as a band."""
    rows = summary[
        (summary.task == task) & (summary.metric == metric) & (summary.source == source)
    ].sort_values(["layer_order", "step"])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    layers = rows.drop_duplicates("layer").sort_values("layer_order")["layer"]
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(layers), 1)))
    for colour, layer in zip(colours, layers, strict=True):
        line = rows[rows.layer == layer]
        ax.plot(line.step, line["mean"], color=colour, label=layer, marker=".")
        ax.fill_between(line.step, line.ci_low, line.ci_high, color=colour, alpha=0.15)
    ax.set_xlabel("denoising step (denoiser call)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{task}: test {METRIC_LABELS.get(metric, metric)} vs step ({source})")
    ax.legend(fontsize=6, ncol=2, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def comparison(
    summary: pd.DataFrame, emergence: pd.DataFrame, task: str, metric: str, path: str | Path
) -> None:
    """Metric vs step per source (its best layer at the last step), with bands and emergence.

    The denoiser probe, the labeler on each step's preview, and every control present in the
    table (drawn as ``sources.py`` declares them, the position baseline among them); a dotted
    vertical line and the legend give each curve's emergence step.
    """
    rows = summary[(summary.task == task) & (summary.metric == metric)]
    marks = emergence[(emergence.task == task) & (emergence.metric == metric)]
    lower = metrics.lower_is_better(metric)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    present = sorted(rows.source.unique(), key=lambda name: SOURCES.index(named(name)))
    for source in present:
        declared = named(source)
        name, colour, style = legend(source), declared.colour, declared.line
        own = rows[rows.source == source]
        last = own[own.step == own.step.max()].sort_values("mean", ascending=lower)
        layer = last["layer"].iloc[0]
        line = own[own.layer == layer].sort_values("step")
        mark = marks[(marks.source == source) & (marks.layer == layer)]
        label = name if declared is LABELER else f"{name} ({layer})"
        if len(mark) and not pd.isna(mark["step"].iloc[0]):
            step = int(mark["step"].iloc[0])
            low, high = mark["ci_low"].iloc[0], mark["ci_high"].iloc[0]
            interval = f" [{int(low)}, {int(high)}]" if not pd.isna(low) else ""
            label += f": emerges at {step}{interval}"
            ax.axvline(step, color=colour, ls=":", lw=1)
        elif len(mark):
            label += ": never"
        ax.plot(line.step, line["mean"], color=colour, ls=style, marker=".", label=label)
        ax.fill_between(line.step, line.ci_low, line.ci_high, color=colour, alpha=0.15)
    ax.set_xlabel("denoising step (denoiser call)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{task}: {METRIC_LABELS.get(metric, metric)} vs step, probe vs labeler")
    ax.legend(fontsize=6, loc="best")
    ax.grid(alpha=0.3)
    _save(fig, path)


def example_grid(
    rows: list[dict], steps: list[int], task: str, layer: str, path: str | Path
) -> None:
    """The study's Figure 4: per image, preview, labeler on preview and probe output per step.

    ``rows``: per image {"title", "previews": [H,W,3] per step, "preview_labels": [H,W] per
    step, "probe": [h,w] per step, "label": [H,W]}.
    """
    n_cols = len(steps) + 1
    kinds = [
        ("preview", "previews"),
        ("labeler on preview", "preview_labels"),
        ("probe", "probe"),
    ]
    fig, axes = plt.subplots(
        len(rows) * len(kinds), n_cols, figsize=(1.1 * n_cols, 1.15 * len(rows) * len(kinds))
    )
    axes = np.atleast_2d(axes)
    for r, row in enumerate(rows):
        for k, (kind, key) in enumerate(kinds):
            line = axes[r * len(kinds) + k]
            for c, step in enumerate(steps):
                line[c].imshow(row[key][c], cmap=None if key == "previews" else "magma")
                if r == 0 and k == 0:
                    line[c].set_title(f"step {step}", fontsize=7)
            if k == 0:
                line[-1].imshow(row["image"])
                line[-1].set_title("final" if r == 0 else "", fontsize=7)
            else:
                line[-1].imshow(row["label"], cmap="magma")
            line[0].set_ylabel(f"{row['title']}\n{kind}" if k == 0 else kind, fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{task}: what the probe on {layer} sees at each step", fontsize=9)
    _save(fig, path)
