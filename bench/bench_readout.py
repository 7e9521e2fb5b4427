"""Is a continuous task's miss the probe's training or the layer? The least-squares linear
read-out of finished study cells, beside the trained probe's scores.

For each cell (source, layer, step) and continuous task of a finished study (its manifest and
stores, read through the probe cell's own ``load_activations``), the ridge least-squares
read-out of the task from the cell's tokens, against the train images' labels average-pooled
to the token grid (for squared error the same optimum as the nearest-upsampled loss, see
REFERENCE.md): the optimum any linear probe trained with squared error could reach. Fitted
twice: on every token, as the probes are trained, and on object tokens only (the tokens whose
pixels are mostly foreground), the best a linear read-out can do where the issue scores it.
Recorded: the fraction of the train targets' variance each fit leaves (train residual), and
its test scores by ``metrics.image_metrics`` (mean over test images, as the study's tables).

Usage: python bench/bench_readout.py --results results --cell unet/up2.1/19 depth
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from benchlib import record

from ldmprobe.core.metrics import FOREGROUND_TASK, image_metrics, upsample_nearest
from ldmprobe.core.tasks import TASKS
from ldmprobe.labels import load_label
from ldmprobe.probing.cell import Cell, load_activations
from ldmprobe.probing.dataset import read_manifest, task_split

RIDGE = 1e-3  # a numerical guard only: the read-out is the least-squares optimum


def labels(manifest, rows, task: str) -> np.ndarray:
    paths = manifest[TASKS[task].label_key].to_numpy()[rows]
    return np.stack([load_label(path, keys=("target",))["target"] for path in paths])


def pooled(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Each map's mean over each token's block of pixels: [images, tokens]."""
    n, height, width = maps.shape
    fy, fx = height // grid[0], width // grid[1]
    return maps.reshape(n, grid[0], fy, grid[1], fx).mean(axis=(2, 4)).reshape(n, -1)


def least_squares(features: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge weights (with a bias) of ``targets`` on ``features`` and the share of the
    targets' variance they leave."""
    design = np.c_[features, np.ones(len(features))]
    gram = design.T @ design + RIDGE * np.eye(design.shape[1])
    weights = np.linalg.solve(gram, design.T @ targets)
    residual = np.mean((design @ weights - targets) ** 2) / np.var(targets)
    return weights, float(residual)


def readout(results: Path, cell: Cell, task: str) -> dict:
    manifest = read_manifest(str(results / "dataset.csv"))
    split = task_split(manifest, task).to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    tokens, grid = load_activations(manifest, cell, np.r_[train, test], torch.float64)
    tokens = tokens.numpy()
    x_train, x_test = tokens[: len(train)], tokens[len(train) :]
    y_train, y_test = labels(manifest, train, task), labels(manifest, test, task)
    objects_train = pooled(labels(manifest, train, FOREGROUND_TASK) > 0.5, grid) > 0.5
    foreground_test = labels(manifest, test, FOREGROUND_TASK) > 0.5
    targets = pooled(y_train.astype(np.float64), grid).reshape(-1)
    features = x_train.reshape(-1, x_train.shape[-1])
    out = {"cell": cell.__dict__, "task": task, "grid": list(grid), "ridge": RIDGE}
    out["images"] = {"train": len(train), "test": len(test)}
    for fit, keep in (("all_tokens", slice(None)), ("object_tokens", objects_train.reshape(-1))):
        weights, residual = least_squares(features[keep], targets[keep])
        design = np.c_[x_test.reshape(-1, x_test.shape[-1]), np.ones(x_test[..., 0].size)]
        predicted = upsample_nearest((design @ weights).reshape(len(test), *grid), y_test.shape[1:])
        scores = [
            image_metrics("continuous", p, t, foreground=f)
            for p, t, f in zip(predicted, y_test, foreground_test, strict=True)
        ]
        out[fit] = {
            "train_residual": round(residual, 3),
            **{
                name: round(float(np.nanmean([s[name] for s in scores])), 3)
                for name in ("spearman", "pearson", "spearman_objects", "pearson_objects")
            },
        }
    return out


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--results", type=Path, default=Path("results"))
    args.add_argument(
        "--cell", action="append", required=True, help="source/layer/step, e.g. unet/up2.1/19"
    )
    args.add_argument("tasks", nargs="+")
    args.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    options = args.parse_args()
    torch.set_num_threads(1)
    for text in options.cell:
        source, layer, step = text.split("/")
        cell = Cell(source, "cond", layer, int(step))
        for task in options.tasks:
            result = readout(options.results, cell, task)
            record(options.results_dir, "readout", "cpu", {"results": str(options.results)}, result)


if __name__ == "__main__":
    main()
