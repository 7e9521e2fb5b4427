"""The edit during generation: the trace's ``edit`` that optimises the conditional half of each
chosen (layer, step) through that cell's probe, and the edited generation itself.

The trace calls ``edit`` from each layer's forward hook as the denoiser runs, so the layers of
a step are optimised in sequence and a later layer sees the earlier layers' edits (Chen et
al.'s order). The unconditional half and the other (layer, step) sites are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .optimise import EditProbe, EditSettings, optimise_activation

log = logging.getLogger(__name__)

EDITED_HALF = "cond"
# One row per edited site: its place, the optimiser's budget and losses, and the summed squares
# of the change and of the original activation (for ||Δ|| / ||a|| over any set of sites).
SITE_COLUMNS = [
    "layer",
    "step",
    "iterations",
    "initial_loss",
    "final_loss",
    "delta_squares",
    "activation_squares",
]


@dataclass
class ProbeEdit:
    """``probes``: the probe of each edited (layer, step); ``target(probe)``: the target map
    [H, W] in that probe's units. ``sites`` records every edit made, in order."""

    probes: dict[tuple[str, int], EditProbe]
    target: Callable[[EditProbe], np.ndarray]
    settings: EditSettings = EditSettings()
    sites: list[dict] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return sorted({layer for layer, _step in self.probes})

    @property
    def steps(self) -> list[int]:
        return sorted({step for _layer, step in self.probes})

    def __call__(self, layer: str, half: str, step: int, tokens: torch.Tensor):
        probe = self.probes.get((layer, step))
        if probe is None or half != EDITED_HALF:
            return None
        result = optimise_activation(probe, tokens, self.target(probe), self.settings)
        edited = result.activation.to(tokens.dtype)  # written back in the model's dtype
        original = tokens.float()
        self.sites.append(
            {
                "layer": layer,
                "step": step,
                "iterations": self.settings.iterations,
                "initial_loss": result.initial_loss,
                "final_loss": result.final_loss,
                "delta_squares": float((edited.float() - original).square().sum()),
                "activation_squares": float(original.square().sum()),
            }
        )
        log.info(
            "edited %s at step %d: probe loss %.4g -> %.4g",
            layer,
            step,
            result.initial_loss,
            result.final_loss,
        )
        return edited


@dataclass
class EditedImage:
    image: object  # PIL image
    x0: np.ndarray  # [calls, channels, h, w]: each call's prediction of the clean latent
    calls: int


def generate_edited(
    pipe,
    prompt: str,
    seed: int,
    generation: dict,
    layers: list,
    edit: ProbeEdit | None,
) -> EditedImage:
    """The image of (prompt, seed) with the generation settings of the study, from the same
    initial noise, edited by ``edit`` (None: unedited) through the trace on the probed modules
    of ``layers`` (``layers.Layer``) that it edits."""
    from ..backbones import backbone_of
    from ..backbones.trace import Trace
    from ..generation.generate import DenoiserCalls, count_unet_calls, initial_noise

    backbone = backbone_of(pipe)
    denoiser = backbone.denoiser(pipe)
    edited_layers = set(edit.layers) if edit is not None else set()
    points = [backbone.point(layer.name, layer.module_path) for layer in layers]
    points = [point for point in points if point.layer in edited_layers]
    latent_shape = backbone.latent_shape(
        denoiser, generation["height"], generation["width"], pipe.vae_scale_factor
    )
    n_calls, _ = count_unet_calls(pipe.scheduler, generation["steps"])
    calls = DenoiserCalls(
        backbone, pipe.scheduler, generation["guidance_scale"], latent_shape, n_calls
    )
    noise = initial_noise(seed, latent_shape)
    with (
        Trace(
            denoiser,
            points,
            halves=(EDITED_HALF,),
            layout=backbone.cfg_layout,
            edit=edit,
            on_call=calls,
        ) as trace,
        torch.no_grad(),
    ):
        result = pipe(
            prompt,
            height=generation["height"],
            width=generation["width"],
            num_inference_steps=generation["steps"],
            guidance_scale=generation["guidance_scale"],
            latents=noise.to(pipe.device, denoiser.dtype),
        )
    return EditedImage(result.images[0], np.stack(calls.x0), trace.calls)
