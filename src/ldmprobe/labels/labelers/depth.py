"""Depth labelers through transformers' ``AutoModelForDepthEstimation``.

Output convention: **relative inverse depth** (larger = nearer), as the models predict it, with
an unknown scale and shift per image; the map is upsampled (bicubic) from the model's output
grid to the image size. The probe target is this map as is (``normalise: none``, as Chen et al.,
who then standardise with fixed dataset constants in the probe settings) or normalised per image
(``normalise: minmax`` or ``standard``, see ``ldmprobe.labels.to_target``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ...core.compat import ensure_torchvision_importable
from ...models import ModelRef
from . import Labeler, image_size, register, resize_maps


@register("dpt")
class DPTDepth(Labeler):
    """MiDaS v3 DPT: ``Intel/dpt-large``, ``Intel/dpt-hybrid-midas``, v3.1 ``Intel/dpt-beit-*``."""

    tasks = ("depth",)
    options = {"normalise": "none"}
    model_types: ClassVar[tuple[str, ...]] = ("dpt",)

    def load(self, path: Path, ref: ModelRef) -> None:
        ensure_torchvision_importable()
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type not in self.model_types:
            raise ValueError(
                f"{ref.key}: {ref.describe()} is a {model_type!r} model; labeler {self.name!r} "
                f"loads {list(self.model_types)} models (labelers: README, section 'Models')"
            )
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForDepthEstimation.from_pretrained(path, use_safetensors=True)
        self.model.to(self.device).eval()

    def predict(self, images: list) -> np.ndarray:
        import torch

        height, width = image_size(images)
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.no_grad():
            depth = self.model(**inputs).predicted_depth
        return resize_maps(depth, height, width, "bicubic")


@register("depth-anything")
class DepthAnythingDepth(DPTDepth):
    """Depth Anything V2 (``depth-anything/Depth-Anything-V2-Small-hf``): a DPT head on DINOv2.

    Its processor keeps the aspect ratio and sizes inputs to a multiple of 14 (518 by default).
    """

    model_types = ("depth_anything",)
