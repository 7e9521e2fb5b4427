"""Training of the world's "off-the-shelf" models (defined in ``ldmprobe.scenes.nets``): the dense
labeler and the object classifier, each saved with its RECIPE.json and the quality measured by
loading the saved folder back (``ldmprobe.world.quality``).

Training is deterministic on the CPU for a thread count: the model's init comes from ``seed``
and the batch of step s from a generator seeded by (seed, s).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..scenes.nets import (
    CLASSES,
    CLASSIFICATION,
    DENSE_TASKS,
    RECIPE_FILE,
    NetRecipe,
    classifier_dataset,
    dense_forward,
    dense_target,
    to_pixels,
)

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    import diffusers
    import timm
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "timm": timm.__version__,
    }


def build_dense_net(recipe: NetRecipe):
    from diffusers import UNet2DModel

    blocks = len(recipe.channels)
    folded = recipe.fold**2
    return UNet2DModel(
        sample_size=recipe.size // recipe.fold,
        in_channels=3 * folded,
        out_channels=len(DENSE_TASKS) * folded,
        block_out_channels=recipe.channels,
        down_block_types=("DownBlock2D",) * blocks,
        up_block_types=("UpBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=8,
    )


# Depth (1/m) and shading are scaled to about the spread of the saliency logits' targets.
LOSS_SCALE = {"depth": 4.0, "shading": 2.0}


def dense_loss(output, targets):
    """Saliency: binary cross-entropy; depth and shading: L1; summed over the tasks."""
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(output[:, 0], targets[:, 0])
    for index, task in enumerate(DENSE_TASKS[1:], start=1):
        loss = loss + LOSS_SCALE[task] * F.l1_loss(output[:, index], targets[:, index])
    return loss


def _batches(recipe: NetRecipe, step: int, count: int) -> np.ndarray:
    return np.random.default_rng([recipe.seed, step]).integers(0, count, recipe.batch_size)


def _train(model, recipe: NetRecipe, count: int, loss_of_batch, what: str) -> float:
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.lr, total_steps=max(recipe.steps, 1), pct_start=0.15
    )
    started = time.perf_counter()
    model.train()
    for step in range(recipe.steps):
        loss = loss_of_batch(_batches(recipe, step, count))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 25 == 0 or step == recipe.steps - 1:
            log.info(
                "%s: step %d/%d, loss %.4f, %.1f s",
                what,
                step + 1,
                recipe.steps,
                loss.item(),
                time.perf_counter() - started,
            )
    model.eval()
    return time.perf_counter() - started


def train_dense_labeler(recipe: NetRecipe, out_dir: str | Path) -> None:
    """Train the world's dense labeler (all tasks) and save it (fp16) with its RECIPE.json."""
    from ..core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torch

    from ..scenes import render_dataset

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    _, arrays = render_dataset(recipe.data_seed, recipe.train_images, recipe.size)
    pixels = to_pixels(arrays["image"])
    targets = torch.from_numpy(np.stack([dense_target(t, arrays) for t in DENSE_TASKS], axis=1))
    log.info("dense labeler: rendered %d training scenes in %.1f s", len(pixels), _since(started))
    model = build_dense_net(recipe)

    def loss_of_batch(index):
        return dense_loss(dense_forward(model, pixels[index], recipe.fold), targets[index])

    train_seconds = _train(model, recipe, len(pixels), loss_of_batch, "world dense labeler")

    def evaluate(folder: Path) -> dict:
        from .quality import dense_quality

        return dense_quality(str(folder), recipe)

    _save(model.half(), recipe, out_dir, train_seconds, evaluate, DENSE_TASKS)


def train_classifier(recipe: NetRecipe, out_dir: str | Path) -> None:
    """Train the world's object classifier (timm) and save it with ``save_for_hf``."""
    from ..core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import timm
    import torch

    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    images, labels = classifier_dataset(recipe.data_seed, recipe.train_images, recipe.size)
    pixels, targets = to_pixels(images), torch.from_numpy(labels)
    log.info("classifier: rendered %d training scenes in %.1f s", len(pixels), _since(started))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))

    def loss_of_batch(index):
        return torch.nn.functional.cross_entropy(model(pixels[index]), targets[index])

    train_seconds = _train(model, recipe, len(pixels), loss_of_batch, "world classifier")

    def evaluate(folder: Path) -> dict:
        from .quality import classifier_quality

        return classifier_quality(str(folder), recipe)

    _save(model.half(), recipe, out_dir, train_seconds, evaluate, (CLASSIFICATION,))


def save_classifier(model, recipe: NetRecipe, folder: Path) -> None:
    """timm's hub layout, with the world's class names and its preprocessing in config.json."""
    import timm

    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, recipe.size, recipe.size),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "hf_hub_id": None,
        "tag": None,
    }
    timm.models.save_for_hf(
        model,
        str(folder),
        model_config={"label_names": list(CLASSES)},
        safe_serialization=True,
    )


def _save(model, recipe, out_dir, train_seconds, evaluate, tasks: tuple[str, ...]) -> None:
    """Weights, then RECIPE.json (the labeler reads the tasks' order and the fold from it),
    then the quality measured by loading the folder back through the code the workflow uses."""
    import os

    from ..core.io import atomic_directory, write_json

    with atomic_directory(out_dir) as tmp:
        if tasks == (CLASSIFICATION,):
            save_classifier(model, recipe, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        record = {
            "tasks": list(tasks),
            "recipe": asdict(recipe),
            "libraries": library_versions(),
            "train_seconds": round(train_seconds, 1),
            # CPU time depends on what else ran: the load average when training ended.
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        write_json(tmp / RECIPE_FILE, record)
        record["quality"] = evaluate(tmp)
        write_json(tmp / RECIPE_FILE, record)
    log.info("world model %s saved to %s: %s", tasks, out_dir, record["quality"])


def _since(started: float) -> float:
    return time.perf_counter() - started
