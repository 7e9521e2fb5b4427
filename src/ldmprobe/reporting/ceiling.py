"""The grid ceiling: the best score a probe on each token grid of the study can reach.

A probe's output lives on its layer's token grid and is nearest-upsampled to the label (the
reference's protocol), so a coarse grid caps every metric below 1 however much the layer
knows: a 16x16 grid over a 64 px label paints 4x4-pixel blocks. The ceiling of a test image
at a grid is ``metrics.grid_ceiling`` of its exact label; the table gives its mean and
bootstrap interval over the task's test images, per task, metric and distinct token grid of
the denoiser's layers, beside which the probes' scores read as a fraction of what their grid
allows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core import metrics
from ..core.tasks import TASKS
from ..labels import load_label
from ..probing.dataset import excluded_from, task_split

COLUMNS = ["task", "metric", "grid", "layers", "mean", "ci_low", "ci_high", "n"]


def grids(layers: list[dict]) -> dict[tuple[int, int], list[str]]:
    """The distinct token grids (height, width) of a layer table, finest first, with the
    names of the layers on each."""
    by_grid: dict[tuple[int, int], list[str]] = {}
    for layer in sorted(layers, key=lambda entry: entry["order"]):
        by_grid.setdefault((layer["height"], layer["width"]), []).append(layer["name"])
    return dict(sorted(by_grid.items(), key=lambda item: -item[0][0] * item[0][1]))


def ceiling_table(
    manifest: pd.DataFrame, layers: list[dict], tasks: list[str], metrics_config: dict
) -> pd.DataFrame:
    """Mean and interval of the grid ceiling over each task's test images (the images the
    task's probes are scored on), per task, metric and token grid."""
    by_grid = grids(layers)
    object_regions = metrics.FOREGROUND_TASK in tasks
    foregrounds: dict[str, np.ndarray] = {}  # label path -> mask, read once for every task

    def foreground_of(image) -> np.ndarray:
        path = image[TASKS[metrics.FOREGROUND_TASK].label_key]
        if path not in foregrounds:
            foregrounds[path] = load_label(path, keys=("target",))["target"] > 0.5
        return foregrounds[path]

    rows = []
    for task in tasks:
        kind = TASKS[task].kind
        values: dict[tuple[tuple[int, int], str], list[float]] = {}
        for _, image in manifest[task_split(manifest, task) == "test"].iterrows():
            target = load_label(image[TASKS[task].label_key], keys=("target",))["target"]
            foreground = None
            # The object regions, as the probe cells take them: the foreground task's label.
            if (
                kind == "continuous"
                and object_regions
                and not excluded_from(image, metrics.FOREGROUND_TASK)
            ):
                foreground = foreground_of(image)
            exact = target > 0.5 if kind == "binary" else target
            for grid in by_grid:
                factor = target.shape[0] // grid[0]
                scores = metrics.grid_ceiling(kind, exact, factor, foreground)
                for metric, value in scores.items():
                    values.setdefault((grid, metric), []).append(value)
        for (grid, metric), scores in values.items():
            summary = metrics.summarise(
                np.asarray(scores),
                metrics_config["bootstrap_resamples"],
                metrics_config["ci_level"],
                metrics_config["seed"],
            )
            names = " ".join(by_grid[grid])
            rows.append(
                {"task": task, "metric": metric, "grid": f"{grid[0]}x{grid[1]}", "layers": names}
                | summary
            )
    return pd.DataFrame(rows, columns=COLUMNS)
