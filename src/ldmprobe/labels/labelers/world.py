"""The known-answer world's labelers (``ldmprobe.world``): learned ones and the exact one.

``world-net`` is the world's "off-the-shelf" labeler: a small U-Net trained on renders
(``ldmprobe.scenes.nets``), one folder per task, run on generated images and previews as TRACER,
MiDaS or Intrinsic are in the studies. Output conventions are the tasks' own: saliency is the
foreground probability in [0, 1] (binarised at ``threshold``), depth is inverse depth in 1/m
(larger = nearer, as MiDaS), shading is grey linear shading. Images are resized (bilinear) to
the net's training size and its maps back to the image size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...core.compat import ensure_torchvision_importable
from ...models import ModelRef
from ...scenes.nets import RECIPE_FILE
from . import Labeler, image_size, register, resize_maps


class _TargetedLabeler(Labeler):
    """A labeler of several tasks whose ``target`` option picks the task it labels."""

    tasks = ("saliency", "depth", "shading")

    @classmethod
    def configure(cls, options: dict) -> dict:
        settings = super().configure(options)
        if settings["target"] not in cls.tasks:
            raise ValueError(
                f"labeler {cls.name!r} needs option 'target', one of {list(cls.tasks)} (the "
                f"task whose map it gives), got {settings['target']!r}"
            )
        return settings


@register("world-net")
class WorldNetLabeler(_TargetedLabeler):
    """The world's dense labeler folder made by ``rules/world_labelers.smk``: a diffusers
    ``UNet2DModel`` (``save_pretrained``) with one map per task, and its RECIPE.json, which
    names the tasks in output order and the pixel fold. ``target`` picks the task's map."""

    options = {"target": None, "threshold": 0.5, "normalise": "none"}

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        return ((RECIPE_FILE,),)

    @classmethod
    def weights_hint(cls, settings: dict) -> str:
        return (
            "The world's labeler is made by the workflow: `snakemake --cores 2 "
            "world/weights/labeler` (rules/world_labelers.smk)."
        )

    def load(self, path: Path, ref: ModelRef) -> None:
        ensure_torchvision_importable()
        import torch
        from diffusers import UNet2DModel

        record = json.loads((path / RECIPE_FILE).read_text())
        target = self.settings["target"]
        if target not in record["tasks"]:
            raise ValueError(
                f"{ref.key}: {ref.describe()} predicts {record['tasks']}, not {target!r}"
            )
        self.channel, self.fold = record["tasks"].index(target), record["recipe"]["fold"]
        self.model = UNet2DModel.from_pretrained(
            path, torch_dtype=torch.float32, use_safetensors=True
        )
        self.model.to(self.device).eval()

    def predict(self, images: list) -> np.ndarray:
        import torch
        from PIL import Image

        from ...scenes.nets import dense_forward, to_pixels

        height, width = image_size(images)
        size = (self.model.config.sample_size * self.fold,) * 2
        pixels = np.stack(
            [np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR)) for im in images]
        )
        with torch.no_grad():
            maps = dense_forward(self.model, to_pixels(pixels).to(self.device), self.fold)
        maps = maps[:, self.channel]
        if self.settings["target"] == "saliency":
            maps = torch.sigmoid(maps)
        return resize_maps(maps, height, width, "bilinear")


@register("world")
class WorldExactLabeler(_TargetedLabeler):
    """Exact labels of the world's images, route (a) of issue 15 (``ldmprobe.scenes.fit``).

    The saliency map is the image's palette mask, exact on any image with no fit; depth (as
    inverse depth, 1/m) and shading are the re-render of the scene fitted to the image's colour
    blobs. For depth and shading, an image whose fit fails (no object, too many, mask IoU below
    ``min_iou`` or PSNR below ``min_psnr``) gets an all-NaN map: it has no label, and
    ``ldmprobe.labels`` excludes it (``world.fit.label_kept`` decides which). The model folder
    holds the world's definition (``world.json``, written by the workflow from
    ``ldmprobe.scenes``); it must match the renderer's, or the labels would be of
    another world. Images are fitted at their own size (square).

    ``scene: render`` is route (b) (``generation.inversion``): the image was generated from the DDIM
    inversion of a render (``generation.start: {kind: world-inversion, data_seed: n}``), so its
    label is that render's exact map, at the image's size, whatever was drawn: mask (the
    saliency), inverse depth and shading, for the final image and every preview alike, none
    excluded. The scene is the one the generation's record (``meta.json``) names: scene
    ``seed`` of its start's ``data_seed``, whose caption must be the row's prompt. ``fit`` (the
    default) is route (a), above.
    """

    options = {
        "target": None,
        "scene": "fit",
        "min_iou": 0.7,
        "min_psnr": 20.0,
        "normalise": "none",
    }
    SCENES = ("fit", "render")

    @classmethod
    def configure(cls, options: dict) -> dict:
        settings = super().configure(options)
        if settings["scene"] not in cls.SCENES:
            raise ValueError(
                f"labeler {cls.name!r}: option 'scene' is one of {list(cls.SCENES)} (fit: the "
                f"scene fitted to the image, route (a); render: the scene the image was "
                f"generated from, route (b)), got {settings['scene']!r}"
            )
        return settings

    @classmethod
    def reads_record(cls, settings: dict) -> bool:
        return settings["scene"] == "render"

    @classmethod
    def required_start(cls, settings: dict) -> str | None:
        return "world-inversion" if cls.reads_record(settings) else None

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        from ...scenes import SPEC_FILE

        return ((SPEC_FILE,),)

    @classmethod
    def weights_hint(cls, settings: dict) -> str:
        return "The world's definition is written by the workflow: `snakemake world/weights/exact`."

    def load(self, path: Path, ref: ModelRef) -> None:
        from ...core.provenance import VERSION_KEY
        from ...scenes import SPEC_FILE, world_spec

        spec = json.loads((path / SPEC_FILE).read_text())
        spec.pop(VERSION_KEY, None)  # which package version wrote it does not matter
        if spec != world_spec():
            raise ValueError(
                f"{ref.key}: {path / SPEC_FILE} describes another world than this renderer's "
                f"(ldmprobe.scenes); rebuild it with `snakemake --forcerun world_spec`"
            )

    def predict(self, images: list) -> np.ndarray:
        from ...scenes import palette_mask
        from ...scenes.fit import fit_scene, label_kept

        if self.reads_record(self.settings):
            raise ValueError(
                f"labeler {self.name!r} with scene: render labels an image by the scene it was "
                "generated from (predict_files with its generation's record), not by its pixels"
            )
        image_size(images)
        target = self.settings["target"]
        thresholds = (self.settings["min_iou"], self.settings["min_psnr"])
        maps = []
        for image in images:
            pixels = np.asarray(image.convert("RGB"))
            # Only a task whose label needs the fit pays for it (saliency needs none).
            fit = None if label_kept(target, None) else fit_scene(pixels, *thresholds)
            if not label_kept(target, fit, *thresholds):
                maps.append(np.full(pixels.shape[:2], np.nan, dtype=np.float32))
            elif target == "saliency":
                maps.append(palette_mask(pixels).astype(np.float32))
            elif target == "depth":
                maps.append((1.0 / fit.render.depth).astype(np.float32))
            else:
                maps.append(fit.render.shading)
        return np.stack(maps).astype(np.float32)

    def predict_files(self, paths: list[Path], record: dict | None) -> list[np.ndarray]:
        """Route (b): the render of the scene the generation started from, at each file's
        size, the same map for the final image and every preview."""
        from PIL import Image

        from ...scenes import render

        scene = self._started_scene(paths, record)
        maps: dict[int, np.ndarray] = {}
        labels = []
        for path in paths:
            with Image.open(path) as image:
                height, width = image.height, image.width
            if height != width:
                raise ValueError(f"{path}: the world's renders are square, not {width}x{height}")
            if height not in maps:
                maps[height] = self._render_map(render(scene, height))
            labels.append(maps[height].copy())
        return labels

    def _started_scene(self, paths: list[Path], record: dict | None):
        """The scene the generation's record says it started from (``inversion.recorded_scene``,
        which also checks that the row's prompt is its caption)."""
        from ...generation.inversion import recorded_scene

        first = paths[0] if paths else "(no image)"
        if record is None:
            raise ValueError(
                f"{first}: labeler {self.name!r} with scene: render needs the generation's "
                "record of the image (its meta.json), which the label job did not give"
            )
        row = f"prompt-table row {record.get('prompt_id', '?')} (seed {record['seed']}), {first}"
        try:
            return recorded_scene(record)
        except ValueError as error:
            raise ValueError(
                f"{row}: labeler {self.name!r} with scene: render cannot label it: {error}"
            ) from None

    def _render_map(self, rendered) -> np.ndarray:
        """The target's map of a render, in route (a)'s units."""
        target = self.settings["target"]
        if target == "saliency":
            return rendered.mask.astype(np.float32)
        if target == "depth":
            return (1.0 / rendered.depth).astype(np.float32)
        return rendered.shading.astype(np.float32)
