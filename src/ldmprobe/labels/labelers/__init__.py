"""Labeler plugins: one small class per off-the-shelf model, registered by name.

A labeler is built from a model reference (resolved to a folder by ``ldmprobe.models``, so the
demo's random-weight models and real weights load through the same code) and its options from
the config. ``predict(images)`` takes RGB images of one size and returns float32 maps
``[n, H, W]`` at that size. A labeler that labels an image by what its generation made it from
rather than by its pixels (``reads_record``) gets the generation's record of the image instead:
``predict_files(paths, record)``. Each class says which tasks it labels (``tasks``), its options and
their defaults (``options``), the files it reads from the model folder (``weight_files``) and the
modules it needs (``requires``, with the ``install`` command when they are not a dependency of
this package). Heavy libraries are imported only when a labeler is built: this package is
imported at parse time.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...models import ModelRef, resolve_model

LABELERS: dict[str, type[Labeler]] = {}


def register(name: str):
    def decorate(factory):
        factory.name = name
        LABELERS[name] = factory
        return factory

    return decorate


class LabelerUnavailable(RuntimeError):
    """A configured labeler needs a package that is not installed; the message says how."""


class Labeler:
    name: ClassVar[str]  # set by register
    tasks: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""

    def __init__(self, ref: ModelRef, device: str, allow_download: bool = False, **options):
        self.settings = self.configure(options)
        self.require()
        full_ref = replace(
            ref, files=self.weight_files(self.settings), hint=self.weights_hint(self.settings)
        )
        path = resolve_model(full_ref, allow_download)
        self.device = device
        # Recorded beside each label: where the weights came from and how they were run.
        self.info = {"path": str(path), "options": self.settings}
        self.load(path, full_ref)

    def load(self, path: Path, ref: ModelRef) -> None:
        raise NotImplementedError

    @classmethod
    def configure(cls, options: dict) -> dict:
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise ValueError(
                f"labeler {cls.name!r} has no option(s) {unknown}; its options: "
                f"{sorted(cls.options) or 'none'}"
            )
        return {**cls.options, **options}

    @classmethod
    def reads_record(cls, settings: dict) -> bool:
        """Whether, with ``settings``, the labeler labels an image from its generation's record
        (the image's ``meta.json``: prompt, seed, ``start``) rather than from its pixels: the
        label job then reads the record and calls ``predict_files`` (``labels.predict_paths``)."""
        return False

    @classmethod
    def required_start(cls, settings: dict) -> str | None:
        """The ``generation.start`` kind the labeled images must be generated from, with
        ``settings`` (None: any); the preflight checks it against the config."""
        return None

    def predict_files(self, paths: list[Path], record: dict | None) -> list[np.ndarray]:
        """The raw map of each image file of one generation (its final image and previews),
        from the generation's ``record`` (``meta.json``, with the row's ``prompt_id`` when the
        label job knows it; None when it has none): for a labeler that ``reads_record``."""
        raise NotImplementedError

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        """Files read from the model folder, each as alternatives; none for save_pretrained."""
        return ()

    @classmethod
    def weights_hint(cls, settings: dict) -> str | None:
        """How to get the weight files, for the preflight message."""
        return None

    @classmethod
    def missing_modules(cls) -> list[str]:
        missing = []
        for module in cls.requires:
            # find_spec of a submodule imports its parent package; the parents here are light.
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                missing.append(module)
        return missing

    @classmethod
    def require(cls) -> None:
        missing = cls.missing_modules()
        if missing:
            raise LabelerUnavailable(
                f"labeler {cls.name!r} needs {', '.join(missing)}, which is not installed. "
                f"Install it with: {cls.install}"
            )


def image_size(images: list) -> tuple[int, int]:
    """(height, width) shared by ``images``: one batch holds images of one size."""
    sizes = {(image.height, image.width) for image in images}
    if len(sizes) != 1:
        raise ValueError(f"a labeler batch must hold images of one size, got {sorted(sizes)}")
    return sizes.pop()


def resize_maps(maps, height: int, width: int, mode: str) -> np.ndarray:
    """float32 [n, height, width] from a torch tensor [n, h, w]."""
    import torch

    resized = torch.nn.functional.interpolate(
        maps[:, None].float(),
        size=(height, width),
        mode=mode,
        **({} if mode == "nearest" else {"align_corners": False}),
    )
    return resized[:, 0].cpu().numpy().astype(np.float32)


def model_ref(key: str, labeler: str, model: dict, options: dict) -> ModelRef:
    """The reference of a labeler's model, naming the files that labeler reads from it."""
    factory = LABELERS[labeler]
    # Unknown options are reported by check_labelers at parse time and when the labeler is built.
    settings = {**factory.options, **options}
    return ModelRef(
        key=key,
        id=str(model["id"]),
        revision=model.get("revision"),
        files=factory.weight_files(settings),
        hint=factory.weights_hint(settings),
    )


# Importing the plugin modules registers them.
from . import depth, saliency, shading, world  # noqa: E402, F401
