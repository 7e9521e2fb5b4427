"""Shading labelers: Marigold intrinsics (diffusers) and Intrinsic (Careaga & Aksoy, optional).

Output convention: **grey linear shading**, one value per pixel at the image size, larger =
more light. Marigold's lighting model predicts an RGB diffuse shading; the grey map is its
Rec. 709 luminance in linear RGB (``grey_shading``). Intrinsic predicts grey *inverse* shading
``1 / (1 + s)`` in (0, 1]; the map is its uninverted ``1 / x - 1`` (``uninvert_shading``), as
the UCSD study used it. Both are relative: their scale differs, so compare probes within one
labeler. ``normalise`` (``ldmprobe.labels.to_target``) can rescale per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.compat import ensure_torchvision_importable
from ...models import ModelRef, find_file
from . import Labeler, image_size, register

# Rec. 709 / sRGB primaries: the luminance of linear RGB.
LUMINANCE = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
# The gamma diffusers' Marigold processor uses between its sRGB and linear spaces.
SRGB_GAMMA = 2.2
# Intrinsic's own uninvert clips the inverse shading here (shading at most 1/eps - 1).
INVERSE_SHADING_EPS = 1e-3


def grey_shading(rgb: np.ndarray, prediction_space: str) -> np.ndarray:
    """Luminance of RGB shading maps [..., 3] in linear light, float32 [...]."""
    if prediction_space == "srgb":
        rgb = np.clip(rgb, 0.0, None) ** SRGB_GAMMA
    elif prediction_space != "linear":
        raise ValueError(f"unknown Marigold prediction space {prediction_space!r}")
    return (np.asarray(rgb, dtype=np.float32) @ LUMINANCE).astype(np.float32)


def uninvert_shading(inverse: np.ndarray, eps: float = INVERSE_SHADING_EPS) -> np.ndarray:
    """Shading ``1 / x - 1`` of Intrinsic's inverse shading ``x = 1 / (1 + s)``."""
    return (1.0 / np.clip(np.asarray(inverse, dtype=np.float32), eps, 1.0) - 1.0).astype(np.float32)


@register("marigold")
class MarigoldShading(Labeler):
    """``MarigoldIntrinsicsPipeline`` with the lighting model ``prs-eth/marigold-iid-lighting-v1-1``
    (targets albedo, shading, residual): the diffuse shading target as grey linear shading.

    ``steps`` and ``processing_resolution`` default to the model's own (None); 0 processes at
    the image's resolution. Each image gets its own generator seeded with ``seed``, so a label
    does not depend on which images share its batch. ``variant`` picks weight files such as
    ``fp16``.
    """

    tasks = ("shading",)
    options = {
        "target": "shading",
        "steps": None,
        "processing_resolution": None,
        "ensemble_size": 1,
        "seed": 0,
        "variant": None,
        "normalise": "none",
    }

    def load(self, path: Path, ref: ModelRef) -> None:
        ensure_torchvision_importable()
        from diffusers import MarigoldIntrinsicsPipeline

        self.pipe = MarigoldIntrinsicsPipeline.from_pretrained(
            path, use_safetensors=True, variant=self.settings["variant"]
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        properties = self.pipe.target_properties or {}
        names = list(properties.get("target_names", []))
        target = self.settings["target"]
        if target not in names:
            raise ValueError(
                f"{ref.key}: {ref.describe()} predicts {names}, not {target!r}; the lighting "
                "model prs-eth/marigold-iid-lighting-v1-1 predicts 'shading'"
            )
        self.target_index, self.n_targets = names.index(target), len(names)
        self.prediction_space = properties[target].get("prediction_space", "srgb")

    def predict(self, images: list) -> np.ndarray:
        import torch

        image_size(images)
        count = len(images) * self.settings["ensemble_size"]
        generators = [
            torch.Generator(self.device).manual_seed(self.settings["seed"]) for _ in range(count)
        ]
        with torch.no_grad():
            prediction = self.pipe(
                images,
                num_inference_steps=self.settings["steps"],
                ensemble_size=self.settings["ensemble_size"],
                processing_resolution=self.settings["processing_resolution"],
                batch_size=count,
                generator=generators,
                output_type="np",
            ).prediction  # [n * targets, H, W, 3], image-major
        rgb = prediction[self.target_index :: self.n_targets]
        return grey_shading(rgb, self.prediction_space)


@register("intrinsic")
class IntrinsicShading(Labeler):
    """Intrinsic (Careaga & Aksoy 2023), the UCSD study's choice, with its paper weights.

    **Academic use only** and not on the package registries (PyPI's ``intrinsic`` is an
    unrelated project), so it is imported only when configured. The model ``id`` is a folder
    holding ``final_weights.pt`` (what ``load_models('paper_weights')`` fetches into
    ``$TORCH_HOME/hub/checkpoints``). The checkpoint is read with ``weights_only=True`` and set
    into the package's two networks (ordinal and real shading, as its ``load_models`` builds
    them); the pipeline runs one image at a time at its R0 resize (``resize_conf=0.0``).
    """

    tasks = ("shading",)
    options = {"weights": "final_weights.pt", "normalise": "none"}
    requires = ("intrinsic.pipeline", "chrislib", "altered_midas")
    install = "pip install git+https://github.com/compphoto/Intrinsic@v1.0"

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        return ((settings["weights"],),)

    @classmethod
    def weights_hint(cls, settings: dict) -> str:
        return (
            "Intrinsic's paper weights: https://github.com/compphoto/Intrinsic/releases/"
            "download/v1.0/final_weights.pt"
        )

    def load(self, path: Path, ref: ModelRef) -> None:
        import torch
        from altered_midas.midas_net import MidasNet
        from altered_midas.midas_net_custom import MidasNet_small

        combined = torch.load(
            find_file(path, self.weight_files(self.settings)[0]),
            map_location="cpu",
            weights_only=True,
        )
        ordinal = MidasNet()
        ordinal.load_state_dict(combined["ord_state_dict"])
        real = MidasNet_small(exportable=False, input_channels=5, output_channels=1)
        real.load_state_dict(combined["iid_state_dict"])
        self.models = {
            "ordinal_model": ordinal.eval().to(self.device),
            "real_model": real.eval().to(self.device),
        }

    def predict(self, images: list) -> np.ndarray:
        from intrinsic.pipeline import run_pipeline

        image_size(images)
        maps = []
        for image in images:
            result = run_pipeline(
                self.models,
                np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0,
                resize_conf=0.0,
                maintain_size=True,
                device=self.device,
            )
            if "inv_shading" not in result:
                raise RuntimeError(
                    f"this Intrinsic version returns {sorted(result)}, not the paper pipeline's "
                    "'inv_shading'; install the version named in README 'Models'"
                )
            maps.append(uninvert_shading(np.squeeze(result["inv_shading"])))
        return np.stack(maps)
