"""The classification experiment's figures: top-k over the steps of one image, and the first
correct step over images beside the probes' emergence steps. matplotlib is imported inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import atomic_file
from ..core.provenance import png_text
from ..core.tasks import KINDS
from .stats import FINAL

# --- figures --------------------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.split(",")[0]


def _thumbnail_steps(n_steps: int, count: int = 6) -> list[int]:
    return sorted({int(round(s)) for s in np.linspace(0, n_steps - 1, min(count, n_steps))})


def topk_figure(
    topk: pd.DataFrame,
    curves: pd.DataFrame,
    previews: Path,
    final_image: Path,
    title: str,
    out_path: Path,
    note: str = "",
    max_legend: int = 8,
) -> None:
    """The study's Figures 5-6 for one image: per preview kind, a strip of previews and the
    probability over the steps of every class in that kind's top-k at some step; the target is
    drawn black and dashed, the final image's probabilities as stars after the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    kinds = [kind for kind in dict.fromkeys(topk["kind"]) if kind != FINAL]
    n_steps = int(topk.loc[topk["kind"] != FINAL, "step"].max()) + 1
    shown = _thumbnail_steps(n_steps)
    final = curves[curves["kind"] == FINAL].set_index("class_index")["probability"]
    # An inch above the panels for the two-line title, whatever the number of kinds.
    height = 1 + 4.6 * len(kinds)
    fig = plt.figure(figsize=(9, height))
    grid = fig.add_gridspec(
        2 * len(kinds), 1, height_ratios=[1, 2.4] * len(kinds), hspace=0.5, top=1 - 1 / height
    )
    for row, kind in enumerate(kinds):
        strip = grid[2 * row].subgridspec(1, len(shown) + 1, wspace=0.05)
        for column, step in enumerate([*shown, None]):
            ax = fig.add_subplot(strip[column])
            path = final_image if step is None else Path(previews, kind, f"step{step:03d}.png")
            with Image.open(path) as image:
                ax.imshow(np.asarray(image.convert("RGB")))
            ax.set_title("final" if step is None else f"{kind} step {step}", fontsize=7)
            ax.axis("off")
        ax = fig.add_subplot(grid[2 * row + 1])
        entered = topk[topk["kind"] == kind]
        # The target gets its own line below, whether or not it enters the top-k.
        lines = curves[
            (curves["kind"] == kind)
            & curves["class_index"].isin(entered["class_index"])
            & ~curves["is_target"]
        ]
        target_rows = curves[(curves["kind"] == kind) & curves["is_target"]]
        peak = lines.groupby("class_index")["probability"].max().sort_values(ascending=False)
        named = set(peak.index[:max_legend])
        colours = iter(plt.cm.tab10(np.linspace(0, 1, 10)))
        for class_index in peak.index:
            line = lines[lines["class_index"] == class_index].sort_values("step")
            if class_index not in named:
                ax.plot(line["step"], line["probability"], color="0.75", lw=0.8)
                continue
            colour = next(colours)
            ax.plot(
                line["step"],
                line["probability"],
                color=colour,
                marker=".",
                label=_short(line["class_name"].iloc[0]),
            )
            ax.plot([n_steps], [final.get(class_index, np.nan)], color=colour, marker="*", ms=9)
        target_line = target_rows.sort_values("step")
        ax.plot(
            target_line["step"],
            target_line["probability"],
            color="black",
            ls="--",
            lw=1.6,
            label=f"target: {_short(target_line['class_name'].iloc[0])}",
        )
        target_index = int(target_line["class_index"].iloc[0])
        ax.plot([n_steps], [final.get(target_index, np.nan)], color="black", marker="*", ms=11)
        ax.set_xticks([*range(n_steps), n_steps], [*map(str, range(n_steps)), "final"], fontsize=7)
        ax.set_xlim(-0.5, n_steps + 0.5)
        top = np.nanmax([1e-3, lines["probability"].max(), target_line["probability"].max()])
        ax.set_ylim(0, 1.08 * float(top))
        ax.set_xlabel("denoising step (U-Net call)")
        ax.set_ylabel(f"probability ({kind} preview)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    _save(fig, out_path)


# Per task, the emergence table's metric drawn beside the classifier: the one the probes'
# comparison uses (Dice for binary tasks, Spearman for continuous ones), else the first listed.
EMERGENCE_METRICS = tuple(kind.headline for kind in KINDS.values())
EMERGENCE_REQUIRED = ("task", "layer", "source", "step", "ci_low", "ci_high")


def emergence_groups(emergence: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The emergence table's rows to draw, one group (task, source, metric) per figure row.

    One metric per task: a table with several metrics per curve (the probes' table has one row
    per layer, source and metric) would otherwise draw the same layers several times. Without a
    ``metric`` column the metric is ``""``.
    """
    missing = [column for column in EMERGENCE_REQUIRED if column not in emergence.columns]
    if missing:
        raise ValueError(
            f"the emergence table lacks the columns {missing} (it has {list(emergence.columns)})"
        )
    if "metric" not in emergence.columns:
        emergence = emergence.assign(metric="")
    groups = []
    for task, rows in emergence.groupby("task", sort=True):
        listed = list(dict.fromkeys(rows["metric"]))
        metric = next((m for m in EMERGENCE_METRICS if m in listed), listed[0])
        chosen = rows[rows["metric"] == metric]
        for source, group in chosen.groupby("source", sort=True):
            groups.append(((task, source, metric), group))
    return groups


def first_correct_figure(
    first: pd.DataFrame,
    summary: pd.DataFrame,
    out_path: Path,
    emergence: pd.DataFrame | None = None,
    note: str = "",
) -> list[str]:
    """Per preview kind and criterion, every image's first-correct step (a dot; "never" right of
    the last step) with the mean and its bootstrap interval; below, when given, the probes'
    emergence steps per task and layer with their intervals, on the same step axis.

    Returns the labels of the figure's rows, top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_steps = int(first["n_steps"].max()) if len(first) else 0
    never = n_steps + 0.5
    rows = []
    for (kind, criterion), group in first.groupby(["kind", "criterion"], sort=True):
        steps = group["step"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        stats = summary[
            (summary["statistic"] == "first_correct_step")
            & (summary["kind"] == kind)
            & (summary["criterion"] == criterion)
            & (summary["target"] == "all")
        ].iloc[0]
        settled = int((~np.isnan(steps)).sum())
        k = criterion.replace("top", "top-")
        label = f"classifier on {kind}, {k} ({settled}/{len(steps)} settle)"
        rows.append((label, steps, stats, "tab:blue"))
    if emergence is not None:
        for (task, source, metric), group in emergence_groups(emergence):
            steps = pd.to_numeric(group["step"], errors="coerce").to_numpy(dtype=np.float64)
            low = pd.to_numeric(group["ci_low"], errors="coerce").to_numpy(dtype=np.float64)
            high = pd.to_numeric(group["ci_high"], errors="coerce").to_numpy(dtype=np.float64)
            what = f"{source}, {metric}" if metric else source
            label = f"{task} emergence ({what}), {len(group)} layer{'s' * (len(group) != 1)}"
            rows.append((label, steps, (low, high), "tab:orange"))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(rows)))
    rng = np.random.default_rng(0)
    for y, (_label, steps, stats, colour) in enumerate(rows):
        shown = np.where(np.isnan(steps), never, steps)
        jitter = rng.uniform(-0.18, 0.18, size=shown.size)
        ax.scatter(shown, y + jitter, s=14, color=colour, alpha=0.7, zorder=3)
        if isinstance(stats, tuple):  # per-layer intervals of the probes
            for value, lo, hi, dy in zip(steps, *stats, jitter, strict=True):
                if np.isfinite(value) and np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [y + dy] * 2, color=colour, lw=0.8, alpha=0.6)
        elif np.isfinite(stats["mean"]):
            ax.errorbar(
                stats["mean"],
                y - 0.32,
                xerr=[[stats["mean"] - stats["ci_low"]], [stats["ci_high"] - stats["mean"]]],
                fmt="D",
                color="black",
                ms=5,
                capsize=3,
                zorder=4,
            )
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    ax.set_xticks([*range(n_steps), never], [*map(str, range(n_steps)), "never"], fontsize=7)
    ax.set_xlim(-0.5, never + 0.5)
    ax.axvline(n_steps - 0.25, color="0.6", lw=0.8, ls=":")
    xlabel = "first step from which the target stays correct (U-Net call)"
    if emergence is not None:
        xlabel += "; probes: emergence step"
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        "When does the classifier see the object?" + (f"\n{note}" if note else ""), fontsize=10
    )
    _save(fig, out_path)
    return [label for label, *_ in rows]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=png_text())
    plt.close(fig)
