"""Saliency labelers: TRACER (the study's choice) and rembg's ONNX sessions (BiRefNet, ISNet).

Output convention: a foreground map in [0, 1] at the image size, quantised to 8 bits as both
libraries return it (an 8-bit mask image, divided by 255 here). The probe target is the map
binarised with ``threshold`` (``ldmprobe.labels.to_target``): the reference counts any value
> 0 of TRACER's 8-bit mask as foreground, hence TRACER's default 0.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ...core.compat import ensure_torchvision_importable
from ...models import ModelRef, find_file
from . import Labeler, image_size, register

log = logging.getLogger(__name__)


def masks_to_maps(masks: list) -> np.ndarray:
    return np.stack([np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 for mask in masks])


@register("tracer")
class TracerSaliency(Labeler):
    """TRACER with an EfficientNet-B7 encoder through carvekit (``TracerUniversalB7``).

    Weights: carvekit's checkpoint ``tracer_b7.pth`` (hub repo ``Carve/tracer_b7``) or the
    user's own TRACER-B7 state dict, in the folder the model ``id`` names. carvekit reads its
    checkpoint with a bare ``torch.load``; here the state dict is read with
    ``weights_only=True`` (tensors only, no pickled code) and set into carvekit's model, which is
    built without loading anything. carvekit's own masks (preprocessing, sigmoid, 8-bit mask,
    bilinear resize to the image size) are the labels.
    """

    tasks = ("saliency",)
    options = {"weights": "tracer_b7.pth", "input_size": 640, "threshold": 0.0}
    requires = ("carvekit",)
    install = "pip install carvekit==4.1.2"

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        return ((settings["weights"],),)

    @classmethod
    def weights_hint(cls, settings: dict) -> str:
        return (
            "Carve/tracer_b7 holds carvekit's TRACER-B7 checkpoint; a folder holding a TRACER-B7 "
            "state dict of your own works too (option 'weights' names its file)."
        )

    def load(self, path: Path, ref: ModelRef) -> None:
        ensure_torchvision_importable()
        import torch
        from carvekit.ml.wrap.tracer_b7 import TracerUniversalB7

        weights = find_file(path, self.weight_files(self.settings)[0])
        # model_path is only a placeholder: without it carvekit would download its checkpoint.
        self.model = TracerUniversalB7(
            device=self.device,
            input_image_size=self.settings["input_size"],
            load_pretrained=False,
            model_path=weights,
        )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise ValueError(
                f"{ref.key}: {weights} is not a TRACER-B7 state dict: "
                f"{len(result.missing_keys)} of the model's tensors are missing "
                f"(first: {result.missing_keys[:3]})"
            )
        if result.unexpected_keys:
            # carvekit loads with strict=False too: its checkpoint holds tensors it does not use.
            log.info(
                "ignored %d checkpoint tensors TRACER-B7 does not use",
                len(result.unexpected_keys),
            )

    def predict(self, images: list) -> np.ndarray:
        image_size(images)
        self.model.batch_size = len(images)
        return masks_to_maps(self.model(images))


@register("rembg")
class RembgSaliency(Labeler):
    """rembg's sessions: BiRefNet (``birefnet-hrsod``, ``birefnet-general``...), ISNet
    (``isnet-general-use``), U²-Net (``u2net``, ``u2netp``) on onnxruntime.

    The model ``id`` is a folder holding ``<session>.onnx``, flat (``$U2NET_HOME`` as older
    rembg wrote it) or under ``models/<session>/`` (the rembg home, as ``rembg d`` writes it).
    rembg's sessions take one image at a time and rescale each mask to [0, 1] by its own
    min and max, hence the default threshold 0.5.
    """

    tasks = ("saliency",)
    options = {"session": "birefnet-hrsod", "threshold": 0.5}
    requires = ("rembg", "onnxruntime")
    install = 'pip install "rembg[cpu]==2.0.86" (or "rembg[gpu]" with CUDA)'

    @classmethod
    def weight_files(cls, settings: dict) -> tuple[tuple[str, ...], ...]:
        name = settings["session"]
        return ((f"{name}.onnx", f"models/{name}/{name}.onnx"),)

    @classmethod
    def weights_hint(cls, settings: dict) -> str:
        return (
            f"rembg's file: `rembg d {settings['session']}` (rembg[cli]) on a machine with "
            "internet writes it under ~/.rembg (or $U2NET_HOME); copy that folder here."
        )

    def load(self, path: Path, ref: ModelRef) -> None:
        # rembg looks its files up in $U2NET_HOME (flat, then models/<name>/): pointing it at
        # the checked folder means it never reaches for the network.
        os.environ["U2NET_HOME"] = str(path)
        import onnxruntime
        from rembg.session_factory import new_session

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ValueError(
                    f"{ref.key}: labels.device is {self.device!r} but this onnxruntime has no "
                    'CUDA provider; install "rembg[gpu]" or set labels.device: cpu'
                )
            providers.insert(0, "CUDAExecutionProvider")
        self.session = new_session(self.settings["session"], providers=providers)

    def predict(self, images: list) -> np.ndarray:
        image_size(images)
        return masks_to_maps([self.session.predict(image)[0] for image in images])
