"""From per-image metrics of every cell to the study's tables."""

from __future__ import annotations

import pandas as pd

from ..core import metrics
from ..core.io import write_csv
from ..generation.sources import named

KEYS = ["source", "task", "layer", "step", "metric"]


def read_cell_metrics(paths: list[str]) -> pd.DataFrame:
    """Per-image rows of every cell (and of the labeler table, ``.csv.gz``), one frame."""
    frames = [pd.read_csv(path, dtype={"prompt_id": str, "half": str}) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarise_metrics(
    per_image: pd.DataFrame,
    layers: list[dict],
    model: str,
    n_resamples: int,
    level: float,
    seed: int,
) -> pd.DataFrame:
    """Mean and bootstrap interval over test images per (source, task, layer, step, metric).

    ``layers`` is the denoiser's layer table; the controls' and the labeler's own layers are
    declared with them (``sources.py``).
    """
    order = {
        (source, layer["name"]): layer
        for source in per_image["source"].unique()
        for layer in named(source).layers(layers)
    }
    rows = []
    for key, group in per_image.groupby(KEYS, sort=False):
        summary = metrics.summarise(group["value"].to_numpy(), n_resamples, level, seed)
        layer = order[(key[0], key[2])]
        rows.append(
            {
                "model": model,
                **dict(zip(KEYS, key, strict=True)),
                "block": layer["block"],
                "layer_order": layer["order"],
                **summary,
            }
        )
    table = pd.DataFrame(rows)
    columns = ["model", "source", "task", "block", "layer", "layer_order", "step", "metric"]
    columns += ["mean", "ci_low", "ci_high", "n"]
    return table[columns].sort_values(["source", "task", "metric", "layer_order", "step"])


def write_tables(per_image: pd.DataFrame, summary: pd.DataFrame, summary_path, per_image_path):
    write_csv(summary_path, summary)
    write_csv(per_image_path, per_image)
