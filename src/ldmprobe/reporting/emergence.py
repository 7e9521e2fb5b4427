"""Emergence as numbers: the labeler-on-preview curve, emergence steps, and their comparison.

The labeler curve scores an off-the-shelf model run on each step's decoded x0 preview against
the task's label of the final image (the same model's, unless ``labels.tasks.<task>.previews``
names another labeler for the previews), per test image, with the probes' metrics (and the
probes' target scaling for RMSE), so it sits in the same tables as the probes under source
``labeler``. The emergence step of a curve is ``metrics.emergence_step`` with a bootstrap
interval over test images (``metrics.emergence_step_bootstrap``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..core import metrics
from ..core.io import write_csv
from ..core.tasks import TASKS
from ..generation.sources import DENOISER, LABELER, named

log = logging.getLogger(__name__)

EMERGENCE_COLUMNS = [
    "task",
    "layer",
    "source",
    "metric",
    "step",
    "ci_low",
    "ci_high",
    "undefined_fraction",
    "final_mean",
    "fraction",
    "n_images",
]


def target_scaling(kind: str, settings: dict, train_targets: list[np.ndarray]):
    """The probe's (mean, std) for the task (``probes.scaling_for``), so RMSEs compare."""
    import torch

    from ..probing.probes import ProbeSettings, scaling_for

    known = {k: v for k, v in settings.items() if k in ProbeSettings.__dataclass_fields__}
    stacked = torch.from_numpy(np.stack(train_targets)) if train_targets else torch.zeros(1)
    return scaling_for(kind, ProbeSettings(**known), stacked)


def labeler_scores(
    manifest: pd.DataFrame, tasks: dict[str, dict], steps: list[int] | None = None
) -> pd.DataFrame:
    """Per test image, task, step and metric: the labeler on that step's preview vs the final.

    ``tasks`` maps each task to its probe settings (only the target scaling is used);
    ``steps`` None means every step the label files hold.
    """
    from ..labels import load_label
    from ..probing.dataset import excluded_from, task_split

    rows = []
    for task_name, settings in tasks.items():
        kind = TASKS[task_name].kind
        column = TASKS[task_name].label_key
        split = task_split(manifest, task_name)
        test = manifest[split == "test"]
        train = manifest[split == "train"][column]
        train_targets = [load_label(p, keys=("target",))["target"] for p in train]
        mean, std = target_scaling(kind, settings, train_targets)
        # The variants of the continuous metrics, as the probes have them (metrics.VARIANTS).
        position_mean = np.mean(train_targets, axis=0, dtype=np.float64) if train_targets else None
        foreground_column = TASKS[metrics.FOREGROUND_TASK].label_key
        for _, image in test.iterrows():
            label = load_label(image[column], keys=("target", "preview_target"))
            foreground = None
            if (
                kind == "continuous"
                and foreground_column in image
                and not excluded_from(image, metrics.FOREGROUND_TASK)
            ):
                foreground = load_label(image[foreground_column], keys=("target",))["target"] > 0.5
            chosen = range(len(label["preview_target"])) if steps is None else steps
            for step in chosen:
                preview = label["preview_target"][step]
                if kind == "binary" and np.isnan(preview).all():
                    # The labeler gave this preview no label (continuous metrics drop NaNs).
                    values = {"dice": float("nan")}
                elif kind == "binary":
                    values = metrics.image_metrics("binary", preview > 0.5, label["target"] > 0.5)
                else:
                    values = metrics.image_metrics(
                        "continuous",
                        (preview - mean) / std,
                        (label["target"] - mean) / std,
                        foreground,
                        None if position_mean is None else (position_mean - mean) / std,
                    )
                rows.extend(metrics.image_rows(image, task_name, values, step=step))
        log.info("%s: labeler on %d test images' previews", task_name, len(test))
    table = pd.DataFrame(
        rows, columns=["prompt_id", "seed", "task", "metric", "value", "step"]
    ).assign(source=LABELER.name(), half="", layer=LABELER.layer["name"])
    return table


def emergence_table(
    per_image: pd.DataFrame, fraction: float, n_resamples: int, level: float, seed: int
) -> pd.DataFrame:
    """Emergence step with bootstrap interval per (task, layer, source, metric) curve."""
    rows = []
    for (task, layer, source, metric), group in per_image.groupby(
        ["task", "layer", "source", "metric"], sort=True
    ):
        # unstack, not pivot_table: it keeps NaN scores and adds no (prompt, seed) pairs.
        curves = group.set_index(["prompt_id", "seed", "step"])["value"].unstack("step")
        curves = curves.sort_index(axis=1)
        steps = curves.columns.to_numpy()
        values = curves.to_numpy(dtype=np.float64)
        result = metrics.emergence_step_bootstrap(
            steps,
            values,
            fraction=fraction,
            higher_is_better=not metrics.lower_is_better(metric),
            n_resamples=n_resamples,
            level=level,
            seed=seed,
        )
        final = values[:, -1]
        rows.append(
            {
                "task": task,
                "layer": layer,
                "source": source,
                "metric": metric,
                **result,
                "final_mean": float(np.nanmean(final)) if np.isfinite(final).any() else np.nan,
                "fraction": fraction,
                "n_images": len(curves),
            }
        )
    table = pd.DataFrame(rows, columns=EMERGENCE_COLUMNS)
    for column in ("step", "ci_low", "ci_high"):
        table[column] = table[column].astype("Int64")
    return table


def best_layer(emergence: pd.DataFrame, task: str, metric: str, source: str) -> pd.Series | None:
    """The source's layer with the best final-step mean for (task, metric), or None."""
    rows = emergence[
        (emergence.task == task) & (emergence.metric == metric) & (emergence.source == source)
    ].dropna(subset=["final_mean"])
    if rows.empty:
        return None
    lower = metrics.lower_is_better(metric)
    return rows.sort_values("final_mean", ascending=lower).iloc[0]


def _step_text(row: pd.Series | None) -> str:
    if row is None:
        return "not measured"
    if pd.isna(row["step"]):
        return "never (no stable signal)"
    interval = (
        f" (95% interval {row['ci_low']}-{row['ci_high']})" if not pd.isna(row["ci_low"]) else ""
    )
    return f"step {row['step']}{interval}"


def comparison(emergence: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Per task: the best denoiser probe layer's emergence step beside the labeler's."""
    denoiser = next((s for s in emergence.source.unique() if named(s) is DENOISER), None)
    rows = []
    for task in tasks:
        metric = TASKS[task].headline
        probe = best_layer(emergence, task, metric, denoiser)
        labeler = best_layer(emergence, task, metric, LABELER.name())
        fraction = float(emergence["fraction"].iloc[0]) if len(emergence) else np.nan
        sentence = (
            f"{task} ({metric}, {fraction:.0%} of the final value): the probe on "
            f"{probe['layer'] if probe is not None else '-'} from {_step_text(probe)}; "
            f"the labeler on the previews from {_step_text(labeler)}."
        )
        rows.append(
            {
                "task": task,
                "metric": metric,
                "probe_layer": probe["layer"] if probe is not None else None,
                "probe_step": probe["step"] if probe is not None else pd.NA,
                "probe_ci_low": probe["ci_low"] if probe is not None else pd.NA,
                "probe_ci_high": probe["ci_high"] if probe is not None else pd.NA,
                "labeler_step": labeler["step"] if labeler is not None else pd.NA,
                "labeler_ci_low": labeler["ci_low"] if labeler is not None else pd.NA,
                "labeler_ci_high": labeler["ci_high"] if labeler is not None else pd.NA,
                "sentence": sentence,
            }
        )
    return pd.DataFrame(rows)


def write_emergence(
    per_image: pd.DataFrame,
    tasks: list[str],
    metrics_config: dict,
    emergence_path,
    comparison_path,
) -> pd.DataFrame:
    table = emergence_table(
        per_image,
        metrics_config["emergence_fraction"],
        metrics_config["bootstrap_resamples"],
        metrics_config["ci_level"],
        metrics_config["seed"],
    )
    write_csv(emergence_path, table)
    compared = comparison(table, tasks)
    write_csv(comparison_path, compared)
    for sentence in compared["sentence"]:
        log.info("%s", sentence)
    return table
