"""How good the world's models are, against the exact truth of held-out renders.

Each model is loaded through the code the workflow uses (the labeler plugin, the classification
experiment's ``load_classifier``) and scored per image; the mean of each metric comes with a
bootstrap interval over images (``ldmprobe.core.metrics.summarise``). Depth and shading are scored
with the probes' metrics (``metrics.image_metrics``), also over object pixels only
(``*_objects``), where the ground plane's row prior cannot help.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from ..core import metrics

BOOTSTRAP = {"n_resamples": 1000, "level": 0.95, "seed": 0}


def dense_scores(task: str, predicted: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Per-image metric values {metric: [n]} of predicted maps against exact ones."""
    scores: dict[str, list[float]] = {}
    for pred, true, objects in zip(predicted, truth, mask, strict=True):
        if task == "saliency":
            hit, want = pred > 0.5, true > 0.5
            values = {"dice": metrics.dice(hit, want), "iou": metrics.iou(hit, want)}
        else:  # the probes' metrics, over object pixels too (metrics.VARIANTS)
            values = metrics.image_metrics("continuous", pred, true, objects)
        for name, value in values.items():
            scores.setdefault(name, []).append(value)
    return {name: np.asarray(values, dtype=np.float64) for name, values in scores.items()}


def summarise_scores(scores: dict[str, np.ndarray]) -> dict[str, dict]:
    return {name: metrics.summarise(values, **BOOTSTRAP) for name, values in scores.items()}


def dense_quality(folder: str, recipe) -> dict[str, dict]:
    """The ``world-net`` labeler in ``folder``, per task, on ``recipe.eval_images`` held-out
    renders: {"<task>.<metric>": summary}."""
    from PIL import Image

    from ..labels import build_labeler
    from ..models import ModelRef
    from ..scenes import render_dataset
    from ..scenes.nets import DENSE_TASKS, dense_target

    _, arrays = render_dataset(recipe.eval_seed, recipe.eval_images, recipe.size)
    images = [Image.fromarray(image) for image in arrays["image"]]
    quality = {}
    for task in DENSE_TASKS:
        ref = ModelRef("world.labeler", folder)
        labeler = build_labeler("world-net", ref, "cpu", False, {"target": task})
        predicted = np.concatenate(
            [labeler.predict(images[start : start + 64]) for start in range(0, len(images), 64)]
        )
        scores = dense_scores(task, predicted, dense_target(task, arrays), arrays["mask"])
        quality.update({f"{task}.{k}": v for k, v in summarise_scores(scores).items()})
    return quality


def classifier_quality(folder: str, recipe) -> dict[str, dict]:
    """Top-1 accuracy of the classifier in ``folder`` on held-out single-object renders."""
    from PIL import Image

    from ..classification.jobs import load_classifier
    from ..classification.prompts import WORLD
    from ..models import ModelRef
    from ..scenes.nets import classifier_dataset

    classifier = load_classifier(ModelRef("world.classifier", folder), classes=WORLD)
    images, labels = classifier_dataset(recipe.eval_seed, recipe.eval_images, recipe.size)
    probabilities = classifier.probabilities([Image.fromarray(image) for image in images], 64)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    return summarise_scores({"accuracy": correct})


def fit_quality(recipe) -> dict[str, dict]:
    """Route (a)'s fit on held-out renders, where it must recover the scene: the share of
    fits that hold, and their mask IoU and PSNR against the render."""
    from ..scenes import render_dataset
    from ..scenes.fit import fit_scene

    _, arrays = render_dataset(recipe.eval_seed, recipe.eval_images, recipe.size)
    fits = [fit_scene(image) for image in arrays["image"]]
    return summarise_scores(
        {
            "fit_ok": np.array([fit.ok for fit in fits], dtype=np.float64),
            "mask_iou": np.array([fit.iou for fit in fits]),
            "psnr": np.array([fit.psnr for fit in fits]),
        }
    )


QUALITY_COLUMNS = ["model", "task", "metric", "mean", "ci_low", "ci_high", "n"]


def quality_table(records: dict[str, dict]) -> pd.DataFrame:
    """Rows (model, task, metric, mean, interval, n) of {model: {"task.metric" or "metric":
    summary}}, for the report."""
    import pandas as pd

    rows = []
    for model, quality in records.items():
        for key, summary in quality.items():
            task, _, metric = key.rpartition(".")
            rows.append({"model": model, "task": task or model, "metric": metric, **summary})
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)


def write_quality_table(folders: list[str], fit_recipe, out_path: str) -> None:
    """The trained models' quality (their RECIPE.json) and the exact fit's, as one table."""
    import json
    from pathlib import Path

    from ..core.io import write_csv
    from ..scenes.nets import CLASSIFICATION, RECIPE_FILE

    records = {}
    for folder in folders:
        record = json.loads((Path(folder) / RECIPE_FILE).read_text())
        name = "classifier" if record["tasks"] == [CLASSIFICATION] else "labeler"
        records[name] = record["quality"]
    records["exact-fit"] = fit_quality(fit_recipe)
    write_csv(out_path, quality_table(records))


def fit_faithfulness(images: list[dict], thresholds: dict[str, dict]) -> tuple:
    """Route (a) on generated images: per image (``prompt_id``, ``seed``, ``path``) the fitted
    objects, the re-render's mask IoU and PSNR against the image, why the fit fails if it does,
    and per task of ``thresholds`` ({task: the ``world`` labeler's options}) whether it keeps
    the image (``fit.label_kept``, the labeler's own rule: saliency always); and a summary (mean
    IoU and PSNR with bootstrap intervals, counts kept and excluded per task)."""
    import pandas as pd
    from PIL import Image

    from ..scenes.fit import MIN_IOU, MIN_PSNR, fit_scene, label_kept

    rows = []
    for image in images:
        pixels = np.asarray(Image.open(image["path"]).convert("RGB"))
        fit = fit_scene(pixels, min_iou=0.0, min_psnr=-np.inf)  # the thresholds: per task
        row = {
            "prompt_id": image["prompt_id"],
            "seed": image["seed"],
            "objects": len(fit.scene.objects) if fit.scene else 0,
            "mask_iou": fit.iou if fit.scene else np.nan,
            "psnr": fit.psnr if fit.scene else np.nan,
            "failure": fit.failure or "",
        }
        for task, options in thresholds.items():
            row[f"kept_{task}"] = label_kept(
                options.get("target", task),
                fit,
                options.get("min_iou", MIN_IOU),
                options.get("min_psnr", MIN_PSNR),
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    summary = [
        {"metric": metric, **metrics.summarise(table[metric].to_numpy(float), **BOOTSTRAP)}
        for metric in ("mask_iou", "psnr")
    ]
    for task in thresholds:
        kept = int(table[f"kept_{task}"].sum())
        summary.append({"metric": f"kept_{task}", "mean": kept / len(table), "n": len(table)})
        summary.append({"metric": f"excluded_{task}", "mean": len(table) - kept, "n": len(table)})
    return table, pd.DataFrame(summary, columns=["metric", "mean", "ci_low", "ci_high", "n"])


def write_fit_faithfulness(
    images: list[dict], thresholds: dict[str, dict], per_image_path: str, summary_path: str
) -> None:
    from ..core.io import write_csv

    table, summary = fit_faithfulness(images, thresholds)
    write_csv(per_image_path, table)
    write_csv(summary_path, summary)


def regeneration_fidelity(images: list[dict]) -> tuple:
    """Route (b) on generated images: per image (``prompt_id``, ``seed``, ``path``, ``meta``:
    its generation's record) the redrawn image against the render it was inverted from, the
    scene whose exact maps are its labels: PSNR (dB) and the IoU of the image's palette mask
    with the render's object mask; and a summary (means with bootstrap intervals)."""
    import json
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    from ..generation.inversion import recorded_scene
    from ..scenes import palette_mask, render

    rows = []
    for image in images:
        try:
            scene = recorded_scene(json.loads(Path(image["meta"]).read_text()))
        except ValueError as error:
            raise ValueError(f"{image['meta']}: route (b)'s fidelity: {error}") from None
        pixels = np.asarray(Image.open(image["path"]).convert("RGB"))
        rendered = render(scene, len(pixels))
        rows.append(
            {
                "prompt_id": image["prompt_id"],
                "seed": image["seed"],
                "psnr": metrics.psnr(pixels, rendered.image),
                "mask_iou": metrics.iou(palette_mask(pixels), rendered.mask),
            }
        )
    table = pd.DataFrame(rows, columns=["prompt_id", "seed", "psnr", "mask_iou"])
    summary = pd.DataFrame(
        [
            {"metric": metric, **metrics.summarise(table[metric].to_numpy(float), **BOOTSTRAP)}
            for metric in ("psnr", "mask_iou")
        ],
        columns=["metric", "mean", "ci_low", "ci_high", "n"],
    )
    return table, summary


def write_regeneration_fidelity(images: list[dict], per_image_path: str, summary_path: str) -> None:
    from ..core.io import write_csv

    table, summary = regeneration_fidelity(images)
    write_csv(per_image_path, table)
    write_csv(summary_path, summary)
