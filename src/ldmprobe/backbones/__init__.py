"""Backbone adapters: one small class per model family, registered by name.

Everything the workflow knows about a family of diffusion models lives in its adapter; the rest
of the package asks the adapter, never the model class. The family of a study is config key
``models.diffusion.backbone`` (default ``stable-diffusion``); ``backbone_of(model)`` finds the
adapter of a loaded pipeline or denoiser by its class.

An adapter provides (``Backbone`` documents each member):

* loading: ``pipeline_classes`` (diffusers class names), ``load_pipeline(path, dtype)`` and
  ``load_denoiser_on_meta(path)`` (structure only, for layer discovery);
* the denoiser: ``denoiser(pipe)``, and ``kind`` (``"unet"``, ``"transformer"``), the word
  used for its source in paths, tables and figures;
* latents: ``latent_shape(denoiser, height, width)`` (channels and downsampling factor);
* the probed layers: ``probed_modules(denoiser)`` ({module path: (short name, block)}), short,
  sortable, path-safe names; ``point(name, module_path)``, the ``trace.Point`` that reads the
  image-token self-attention output of that module (a joint-attention family reads its image
  stream in ``Point.read`` and puts edited tokens back in ``Point.write``); and
  ``discovery_call(denoiser, latent_h, latent_w)``, one forward on zeros for the token grids;
* the prompt: ``prompt_length(pipe, prompt)`` (the text encoder's limit, and whether it cuts);
* CFG: ``cfg_layout(batch)`` ({half: row}; a family without a CFG batch (guidance-distilled)
  maps a batch of one to ``cond`` only, so asking for ``uncond`` is an error the trace names)
  and ``guided(prediction, guidance_scale)``;
* a denoiser call: ``call_timestep``, ``call_sample`` (from its args and kwargs),
  ``call_prediction`` (from its output), ``replay_inputs`` (what replaying it needs: text
  embeddings, pooled embeddings, ``added_cond_kwargs``...) and ``replay(denoiser, inputs)``,
  for the permuted control;
* the VAE control: ``vae_module`` (the traced module's path under ``vae.decoder``) and
  ``vae_channels(vae)``;
* the free-space preflight: ``denoiser_config(root)`` (its config.json, if on this machine) and
  ``estimate(config, height, width)`` from it alone (no torch: it runs at the Snakefile's
  parse).

The modules of this package import torch and diffusers only inside functions: the Snakefile's
parse imports them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..trace import Point

DEFAULT_BACKBONE = "stable-diffusion"

BACKBONES: dict[str, type[Backbone]] = {}


def register(name: str):
    def decorate(adapter):
        adapter.name = name
        BACKBONES[name] = adapter
        return adapter

    return decorate


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(
            f"config key 'models.diffusion.backbone': {name!r} is not a known backbone; "
            f"allowed: {sorted(BACKBONES)}"
        )
    return BACKBONES[name]()


def backbone_of(model) -> Backbone:
    """The adapter of a loaded pipeline or denoiser, by its class name."""
    kind = type(model).__name__
    for adapter in BACKBONES.values():
        if kind in adapter.pipeline_classes or kind in adapter.denoiser_classes:
            return adapter()
    raise ValueError(f"no backbone adapter knows {kind}; known: {sorted(BACKBONES)}")


@dataclass(frozen=True)
class Estimate:
    """What one denoiser call writes, from config files alone: (tokens, channels) of each
    probed layer, and the latent's shape (channels, height, width)."""

    layers: list[tuple[int, int]]
    latent: tuple[int, int, int]


class Backbone:
    """Base of the adapters; defaults are those of a U-Net pipeline called as
    ``denoiser(sample, timestep, encoder_hidden_states=...)`` with CFG batch [uncond, cond]."""

    name: ClassVar[str]  # set by register
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_attribute: ClassVar[str] = "unet"  # the pipeline's attribute, and its subfolder
    kind: ClassVar[str] = "unet"
    vae_module: ClassVar[str] = ""

    # Loading ------------------------------------------------------------------------------
    def load_pipeline(self, path: Path, dtype):
        raise NotImplementedError

    def load_denoiser_on_meta(self, path: Path):
        raise NotImplementedError

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attribute)

    def denoiser_config(self, root: Path) -> dict | None:
        """The denoiser's config.json under a model folder, or None if it is not there."""
        path = root / self.denoiser_attribute / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # Latents and layers -------------------------------------------------------------------
    def latent_shape(self, denoiser, height: int, width: int) -> tuple[int, int, int]:
        raise NotImplementedError

    def probed_modules(self, denoiser) -> dict[str, tuple[str, str]]:
        raise NotImplementedError

    def point(self, name: str, module_path: str) -> Point:
        return Point(name, module_path)

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        raise NotImplementedError

    # Prompt and CFG -----------------------------------------------------------------------
    def prompt_length(self, pipe, prompt: str) -> dict:
        raise NotImplementedError

    def cfg_layout(self, batch: int) -> dict[str, int]:
        """Row of each CFG half in a denoiser batch: [uncond, cond] with CFG, else cond."""
        if batch == 2:
            return {"uncond": 0, "cond": 1}
        if batch == 1:
            return {"cond": 0}
        raise ValueError(f"a {self.name} denoiser batch of {batch} is not a CFG batch of 1 image")

    def guided(self, prediction, guidance_scale: float):
        """The guided prediction of one image from a denoiser batch."""
        if prediction.shape[0] == 1:
            return prediction
        rows = self.cfg_layout(prediction.shape[0])
        uncond, cond = prediction[rows["uncond"]], prediction[rows["cond"]]
        return (uncond + guidance_scale * (cond - uncond))[None]

    # One denoiser call --------------------------------------------------------------------
    def call_timestep(self, args, kwargs):
        return args[1] if len(args) > 1 else kwargs["timestep"]

    def call_sample(self, args, kwargs):
        return args[0] if args else kwargs["sample"]

    def call_prediction(self, output):
        return output[0] if isinstance(output, tuple) else output.sample

    def replay_inputs(self, args, kwargs) -> dict:
        raise NotImplementedError

    def replay(self, denoiser, inputs: dict) -> None:
        denoiser(**inputs, return_dict=False)

    # VAE control and preflight ------------------------------------------------------------
    def vae_channels(self, vae) -> int:
        raise NotImplementedError

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        """What one call writes at this image size, from the denoiser's config.json alone."""
        raise NotImplementedError


from . import stable_diffusion  # noqa: E402, F401
