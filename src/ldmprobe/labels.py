"""Labelers: off-the-shelf models that turn an image into a per-pixel label.

A labeler is registered by name and built from a model reference; ``predict`` takes RGB images
and returns float32 maps at each image's own resolution. The task decides how a raw map becomes
a probe target (``TASKS``): saliency maps are binarised, depth and shading stay continuous.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compat import ensure_torchvision_importable
from .io import atomic_file
from .models import ModelRef, resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "binary" or "continuous"


TASKS = {
    "saliency": Task("saliency", "binary"),
    "depth": Task("depth", "continuous"),
    "shading": Task("shading", "continuous"),
}

LABELERS: dict[str, Callable] = {}


def register(name: str):
    def decorate(factory):
        LABELERS[name] = factory
        return factory

    return decorate


class DPTDepth:
    """MiDaS-style DPT through transformers: relative inverse depth (larger = nearer)."""

    tasks = ("depth",)

    def __init__(self, ref: ModelRef, device: str, allow_download: bool = False, **_options):
        ensure_torchvision_importable()
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        path = resolve_model(ref, allow_download)
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForDepthEstimation.from_pretrained(path, use_safetensors=True)
        self.model.to(device).eval()
        self.device = device

    def predict(self, images: list) -> np.ndarray:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.no_grad():
            depth = self.model(**inputs).predicted_depth
        height, width = images[0].height, images[0].width
        resized = torch.nn.functional.interpolate(
            depth[:, None].float(), size=(height, width), mode="bicubic", align_corners=False
        )
        return resized[:, 0].cpu().numpy().astype(np.float32)


register("dpt")(DPTDepth)


def to_target(task: Task, raw: np.ndarray, options: dict) -> np.ndarray:
    """The probe target of a raw labeler map (REFERENCE.md: saliency foreground is > 0)."""
    if task.kind == "binary":
        return (raw > float(options.get("threshold", 0.0))).astype(np.float32)
    normalise = options.get("normalise", "none")
    if normalise == "none":
        return raw.astype(np.float32)
    axes = tuple(range(raw.ndim - 2, raw.ndim))
    if normalise == "minmax":
        low = raw.min(axis=axes, keepdims=True)
        span = raw.max(axis=axes, keepdims=True) - low
        return ((raw - low) / np.where(span > 0, span, 1)).astype(np.float32)
    if normalise == "standard":
        std = raw.std(axis=axes, keepdims=True)
        return ((raw - raw.mean(axis=axes, keepdims=True)) / np.where(std > 0, std, 1)).astype(
            np.float32
        )
    raise ValueError(f"unknown normalise option {normalise!r}")


def build_labeler(name: str, ref: ModelRef, device: str, allow_download: bool, options: dict):
    if name not in LABELERS:
        raise ValueError(f"unknown labeler {name!r}; known: {sorted(LABELERS)}")
    return LABELERS[name](ref, device=device, allow_download=allow_download, **options)


def label_image(
    labeler,
    task: Task,
    options: dict,
    image_path: Path,
    preview_paths: list[Path],
    out_path: Path,
    provenance: dict,
    batch_size: int = 8,
) -> None:
    """Label the final image and each step's preview; one .npz with targets and raw maps."""
    from PIL import Image

    final_raw = labeler.predict([Image.open(image_path).convert("RGB")])[0]
    preview_raw = []
    for start in range(0, len(preview_paths), batch_size):
        batch = [Image.open(p).convert("RGB") for p in preview_paths[start : start + batch_size]]
        preview_raw.extend(labeler.predict(batch))
        log.info(
            "labelled previews %d/%d",
            min(start + batch_size, len(preview_paths)),
            len(preview_paths),
        )
    preview_raw = (
        np.stack(preview_raw) if preview_raw else np.zeros((0, *final_raw.shape), np.float32)
    )
    with atomic_file(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            target=to_target(task, final_raw, options),
            raw=final_raw,
            preview_target=to_target(task, preview_raw, options),
            preview_raw=preview_raw,
            provenance=np.array(repr(provenance)),
        )


def load_label(path: str | Path, producer: str = "label") -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in ("target", "raw", "preview_target", "preview_raw")}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise RuntimeError(
            f"label file {path} is missing or corrupt ({error}); it is made by rule "
            f"'{producer}': delete it and rerun snakemake"
        ) from error
