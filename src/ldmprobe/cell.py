"""One probe-grid cell: load a (source, layer, step) slice of every image, train every task.

The dataset manifest (``dataset.py``) lists each image's split, store and label files; the
cell reads one chunk per image (of the U-Net or a control, ``controls.py``), trains on train,
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

from .controls import read_tokens, token_grid
from .io import atomic_file, write_csv
from .labels import TASKS, load_label
from .probes import ProbeSettings, evaluate, state_tensors, train_probe
from .storage import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    source: str
    half: str
    layer: str
    step: int


def load_activations(manifest: pd.DataFrame, cell: Cell) -> tuple[torch.Tensor, tuple[int, int]]:
    """[n_images, tokens, channels], in manifest order, and the token grid."""
    chunks, grid = [], None
    for index, store_path in enumerate(manifest["store"]):
        group = open_store(store_path)
        if grid is None:
            grid = token_grid(group, cell.source, cell.layer)
        tokens = read_tokens(group, cell.source, cell.half, cell.layer, cell.step, store_path)
        chunks.append(torch.from_numpy(np.ascontiguousarray(tokens)))
        if (index + 1) % 100 == 0:
            log.info("read %d/%d images", index + 1, len(manifest))
    log.info("read %d images of %s %s step %d", len(manifest), cell.source, cell.layer, cell.step)
    return torch.stack(chunks), grid


def run_cell(
    manifest: pd.DataFrame,
    cell: Cell,
    tasks: dict[str, ProbeSettings],
    weights_path: Path,
    metrics_path: Path,
) -> pd.DataFrame:
    activations, (height, width) = load_activations(manifest, cell)
    split = manifest["split"].to_numpy()
    parts = {
        name: torch.from_numpy(np.flatnonzero(split == name)) for name in ("train", "val", "test")
    }
    if len(parts["train"]) == 0 or len(parts["test"]) == 0:
        raise ValueError("the probe needs at least one train and one test image; check the splits")

    tensors, training, rows = {}, {}, []
    for task_name, settings in tasks.items():
        task = TASKS[task_name]
        labels = torch.from_numpy(
            np.stack([load_label(path)["target"] for path in manifest[f"label_{task_name}"]])
        )
        trained = train_probe(
            task.kind,
            settings,
            activations.index_select(0, parts["train"]),
            labels.index_select(0, parts["train"]),
            activations.index_select(0, parts["val"]),
            labels.index_select(0, parts["val"]),
            height,
            width,
        )
        test_metrics = evaluate(
            trained,
            activations.index_select(0, parts["test"]),
            labels.index_select(0, parts["test"]).numpy(),
            height,
            width,
        )
        for row_index, values in zip(parts["test"].tolist(), test_metrics, strict=True):
            image = manifest.iloc[row_index]
            for metric, value in values.items():
                rows.append(
                    {
                        "prompt_id": image["prompt_id"],
                        "seed": image["seed"],
                        "task": task_name,
                        "metric": metric,
                        "value": value,
                    }
                )
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

    from safetensors.torch import save_file

    metadata = {
        "cell": json.dumps(cell.__dict__),
        "grid": json.dumps([height, width]),
        "training": json.dumps(training),
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
