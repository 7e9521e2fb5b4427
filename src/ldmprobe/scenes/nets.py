"""The world's "off-the-shelf" models: dense labelers and an object classifier, trained on renders.

They play the part TRACER, MiDaS, Intrinsic and VGG-16 play in the studies: networks trained on
images with known answers, then run on what the diffusion model draws. Each is built from
library parts and saved with the library's own code, so the workflow loads it as it loads any
other model:

- the dense labeler is one diffusers ``UNet2DModel`` with a map per task (saliency, depth,
  shading), like Marigold's one model for several targets. It works on the image folded into
  2x2 pixel blocks (``pixel_unshuffle``; the maps unfold back), so a 64 px image costs a
  32 px U-Net on the CPU without giving up full-resolution maps; its time embedding is fed a
  constant 0 (a plain image-to-maps U-Net). Saved with ``save_pretrained``, loaded by the
  ``world-net`` labeler plugin (``ldmprobe.labels.labelers.world``);
- the classifier is timm's ``test_resnet`` with one class per (colour, shape) of the palette
  (``CLASSES``), saved with ``timm.models.save_for_hf`` with the class names in its config.

Targets follow the task conventions of ``ldmprobe.labels.labelers``: saliency is the foreground
probability, depth is inverse depth (1/m, larger = nearer), shading is grey linear shading.
This module defines them (classes, targets, recipe, the dense labeler's forward pass), which the
labeler plugin and the classification prompts read; ``ldmprobe.world.nets`` trains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import PALETTE, SHAPES, Scene, render, sample_scene, scene_rng

DENSE_TASKS = ("saliency", "depth", "shading")
# One class per colour and shape: what a single-object scene shows ("red sphere").
CLASSES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in PALETTE for shape in SHAPES)
CLASSIFICATION = "classification"
RECIPE_FILE = "RECIPE.json"


def dense_target(task: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The exact map of ``task`` from rendered arrays, in the task's labeler convention."""
    if task == "saliency":
        return arrays["mask"].astype(np.float32)
    if task == "depth":
        return (1.0 / arrays["depth"]).astype(np.float32)
    if task == "shading":
        return arrays["shading"].astype(np.float32)
    raise ValueError(f"unknown world task {task!r}; expected one of {DENSE_TASKS}")


def single_object(scene: Scene) -> Scene:
    """The scene with only its first object: what the classifier's images show."""
    return Scene(scene.objects[:1], scene.light, scene.camera_jitter)


def class_of(scene: Scene) -> int:
    obj = scene.objects[0]
    return CLASSES.index(f"{obj.colour} {obj.shape}")


def classifier_dataset(seed: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, H, W, 3] uint8 of single-object scenes and their class indices [n]."""
    scenes = [single_object(sample_scene(scene_rng(seed, i))) for i in range(count)]
    images = np.stack([render(scene, size).image for scene in scenes])
    return images, np.array([class_of(scene) for scene in scenes])


@dataclass(frozen=True)
class NetRecipe:
    """How one world model is trained; recorded in its RECIPE.json."""

    size: int = 64
    train_images: int = 1000
    data_seed: int = 1000  # renders of their own, apart from the diffusion model's
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    channels: tuple[int, ...] = (16, 32, 64)
    fold: int = 2  # pixel_unshuffle factor of the dense net
    seed: int = 0
    eval_images: int = 200
    eval_seed: int = 2000


# The classifier sees one object per image: fewer, larger batches than the dense labeler.
CLASSIFIER_DEFAULTS = {"steps": 500, "batch_size": 32}


def recipe(overrides: dict, defaults: dict | None = None) -> NetRecipe:
    """A NetRecipe from config overrides (config keys world.labeler / world.classifier);
    an unknown key raises ValueError naming the known ones."""
    settings = {**(defaults or {}), **overrides}
    known = set(NetRecipe.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown recipe key(s) {unknown}; known: {sorted(known)}")
    if "channels" in settings:
        settings["channels"] = tuple(settings["channels"])
    return NetRecipe(**settings)


def to_pixels(images: np.ndarray):
    """Float tensor [n, 3, H, W] in [-1, 1] of uint8 RGB images [n, H, W, 3]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def dense_forward(model, pixels, fold: int):
    """Raw maps [n, tasks, H, W] (saliency as a logit) of pixels [n, 3, H, W] in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    timestep = torch.zeros(len(pixels), device=pixels.device)
    return F.pixel_shuffle(model(F.pixel_unshuffle(pixels, fold), timestep).sample, fold)
