"""One probe-grid cell: load a (source, layer, step) slice of every image, train every task.

The dataset manifest (``dataset.py``) lists each image's split, store and label files; the
cell reads one chunk per image (of the denoiser or a control, ``sources.py``), trains on train,
selects the epoch on val, and scores test.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.io import atomic_file, write_csv
from ..core.metrics import FOREGROUND_TASK, image_rows
from ..core.provenance import VERSION_KEY, package_version
from ..core.tasks import TASKS
from ..generation.sources import named
from ..generation.storage import open_store
from ..labels import load_label
from .dataset import EXCLUDED, task_split
from .probes import ProbeSettings, ProbeTask, evaluate, state_tensors, train_probes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    source: str
    half: str
    layer: str
    step: int


def load_activations(
    manifest: pd.DataFrame,
    cell: Cell,
    rows: np.ndarray | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[len(rows), tokens, channels] of the manifest's ``rows`` (default: all, at least one)
    in that order, as ``dtype`` (default: as stored), and the token grid. Filled image by image
    into one tensor, so reading needs the result's memory and one image more."""
    rows = np.arange(len(manifest)) if rows is None else np.asarray(rows)
    stores = manifest["store"].to_numpy()
    source = named(cell.source)
    result, grid = None, None
    for position, row in enumerate(rows):
        group = open_store(stores[row])
        if grid is None:
            grid = source.grid(group, cell.source, cell.layer)
        tokens = source.read(group, cell.source, cell.half, cell.layer, cell.step, stores[row])
        tokens = torch.from_numpy(np.ascontiguousarray(tokens))
        if result is None:
            result = torch.empty((len(rows), *tokens.shape), dtype=dtype or tokens.dtype)
        result[position] = tokens
        if (position + 1) % 100 == 0:
            log.info("read %d/%d images", position + 1, len(rows))
    if result is None:
        raise ValueError("no images to read")
    log.info("read %d images of %s %s step %d", len(rows), cell.source, cell.layer, cell.step)
    return result, grid


PARTS = ("train", "val", "test")


def train_group(
    manifest: pd.DataFrame,
    cell: Cell,
    tasks: dict[str, ProbeSettings],
    parts: dict[str, np.ndarray],
    device: str,
    into: tuple[dict, dict, list],
    foreground_rows: bool,
) -> tuple[int, int]:
    """Train and score ``tasks`` on the manifest's rows ``parts`` (train, val, test); add their
    tensors, training records and per-image metric rows to ``into``. ``foreground_rows``: the
    cell has the foreground task, whose labels give the continuous tasks' object regions."""
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise ValueError(
            f"the probe of {sorted(tasks)} needs at least one train and one test image; check "
            "the splits and the manifest's excluded_by"
        )
    # Training reads every train image once per epoch: convert it to float32 once (on the CPU
    # while reading, on a GPU after the copy, which then moves half the bytes); validation
    # and test stay as stored and are converted a few images at a time.
    activations, grid = {}, None
    for part, part_rows in parts.items():
        if len(part_rows):
            train = part == "train"
            dtype = torch.float32 if train and device == "cpu" else None
            values, grid = load_activations(manifest, cell, part_rows, dtype)
            values = values.to(device)
            activations[part] = values.float() if train else values
    activations.setdefault("val", activations["test"][:0])
    height, width = grid

    def final_targets(task_name: str, part_rows: np.ndarray) -> torch.Tensor:
        # Only the final image's target: a label file holds every preview's maps too.
        paths = manifest[TASKS[task_name].label_key].to_numpy()[part_rows]
        return torch.from_numpy(
            np.stack([load_label(path, keys=("target",))["target"] for path in paths])
        )

    targets = {}
    for task_name in tasks:
        targets[task_name] = {
            part: final_targets(task_name, part_rows)
            for part, part_rows in parts.items()
            if len(part_rows)
        }
        targets[task_name].setdefault("val", targets[task_name]["test"][:0])
    trained_probes = train_probes(
        {
            task_name: ProbeTask(
                TASKS[task_name].kind,
                settings,
                targets[task_name]["train"],
                targets[task_name]["val"],
            )
            for task_name, settings in tasks.items()
        },
        activations["train"],
        activations["val"],
        height,
        width,
    )

    # The metric variants of continuous tasks (metrics.VARIANTS): object regions from the test
    # images' foreground labels, when the study has them; the training set's mean per position.
    foregrounds = None
    if FOREGROUND_TASK in targets:
        foregrounds = targets[FOREGROUND_TASK]["test"].numpy() > 0.5
    elif (
        foreground_rows
        and not task_split(manifest, FOREGROUND_TASK).iloc[parts["test"]].eq(EXCLUDED).any()
    ):
        foregrounds = final_targets(FOREGROUND_TASK, parts["test"]).numpy() > 0.5
    tensors, training, rows = into
    for task_name, settings in tasks.items():
        trained = trained_probes[task_name]
        continuous = TASKS[task_name].kind == "continuous"
        test_metrics = evaluate(
            trained,
            activations["test"],
            targets[task_name]["test"].numpy(),
            height,
            width,
            foregrounds if continuous else None,
            targets[task_name]["train"].double().mean(0).numpy() if continuous else None,
        )
        for row_index, values in zip(parts["test"].tolist(), test_metrics, strict=True):
            rows.extend(image_rows(manifest.iloc[row_index], task_name, values))
        tensors.update(state_tensors(trained, task_name))
        training[task_name] = {
            "chosen_epoch": trained.chosen_epoch,
            "selection": trained.selection,
            "target_mean": trained.target_mean,
            "target_std": trained.target_std,
            "history": trained.history,
            "settings": settings.__dict__,
        }
        log.info("%s: chose epoch %d by %s", task_name, trained.chosen_epoch, trained.selection)
    return height, width


def run_cell(
    manifest: pd.DataFrame,
    cell: Cell,
    tasks: dict[str, ProbeSettings],
    weights_path: Path,
    metrics_path: Path,
    device: str = "cpu",
) -> pd.DataFrame:
    """Train every task's probe on the cell on ``device`` (a torch device name): the cell's
    activations go there once, and the probes train and score there. Tasks whose labels cover
    the same images (``dataset.task_split``: an image without a depth label still has its
    mask) train together, each group on its own images."""
    groups: dict[tuple, list[str]] = {}
    for task_name in tasks:
        split = task_split(manifest, task_name).to_numpy()
        parts = tuple(tuple(np.flatnonzero(split == name).tolist()) for name in PARTS)
        groups.setdefault(parts, []).append(task_name)
    tensors, training, rows = {}, {}, []
    for parts, names in groups.items():
        height, width = train_group(
            manifest,
            cell,
            {name: tasks[name] for name in names},
            {
                part: np.array(part_rows, dtype=int)
                for part, part_rows in zip(PARTS, parts, strict=True)
            },
            device,
            (tensors, training, rows),
            foreground_rows=FOREGROUND_TASK in tasks,
        )

    from safetensors.torch import save_file

    metadata = {
        "cell": json.dumps(cell.__dict__),
        "grid": json.dumps([height, width]),
        "training": json.dumps(training),
        VERSION_KEY: json.dumps(package_version()),  # every value is JSON (load_probe_weights)
    }
    with atomic_file(weights_path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    table = pd.DataFrame(rows, columns=["prompt_id", "seed", "task", "metric", "value"])
    for key, value in cell.__dict__.items():
        table[key] = value
    write_csv(metrics_path, table)
    return table


def load_probe_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    return tensors, {key: json.loads(value) for key, value in metadata.items()}
