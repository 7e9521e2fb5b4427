"""Activation sources, each declared once: how it is captured, its layers and token grid, how a
probe cell reads its tokens, which CFG half applies, and how the figures draw it.

* the denoiser (``unet`` for Stable Diffusion: the backbone's ``kind``): its probed
  self-attention layers, traced during generation (``generation.py``), one CFG half each;
* ``<kind>-permuted`` (Chen et al.'s control, config key ``controls.permuted_unet``): every
  weight tensor of a copy of the denoiser permuted with a fixed seed, biases kept, replayed on
  the very inputs the real one saw at each call, so images and labels are the study's own;
* ``vae`` (``controls.vae``): the VAE decoder's mid-block self-attention while it decodes each
  step's latent;
* ``latent`` (``controls.latent``): the noisy latent x_t itself, the denoiser's input, on the
  latent grid: what a linear probe reads without any network;
* ``position`` (``controls.position``): the token's position alone, as a 2-D cosine (DCT)
  basis of the latent grid, ``POSITION_FREQUENCIES`` per axis (on a grid no larger than that,
  as good as a one-hot code: the probe can learn any map of position). What any probe gets
  from where a token is (depth's floor-below, sky-above prior) and not from what it holds;
* ``labeler`` is no activation source: it names the rows of the off-the-shelf labeler run on
  each step's preview and scored against the final image's label.

The VAE, latent and position arrays are no CFG half (they come from the guided trajectory or
from no image at all), so their half is ``guided``. The rules, the probe cells, the tables,
emergence and the figures read these declarations. Imported when the Snakefile is parsed:
numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..backbones import BACKBONES

GUIDED = "guided"
PROBED = "probed"  # stands for the probed CFG half, config key probe.cfg_half
POSITION_FREQUENCIES = 8


@dataclass(frozen=True)
class Source:
    role: str
    pattern: str  # its name; "{kind}" is the backbone's denoiser kind
    legend: str  # in the figures; "{model}" is the backbone's name for its denoiser
    colour: str
    line: str
    control: str | None  # its section under config key `controls`; None: not a control
    half: str  # PROBED or GUIDED
    layer: Mapping | None  # its one layer {name, block, order}; None: the denoiser's layers
    tokens: str  # how a cell reads them: "store", "latent", "position"; "" is not probed

    def name(self, kind: str | None = None) -> str:
        """Its name in paths and tables; ``kind`` (the backbone's) names the denoiser's."""
        if kind is None and "{kind}" in self.pattern:
            raise ValueError(f"the {self.role} source's name needs the backbone's kind")
        return self.pattern.format(kind=kind)

    def half_for(self, probe_half: str) -> str:
        return probe_half if self.half == PROBED else self.half

    def layers(self, denoiser_layers: list) -> list:
        """Its layers: the denoiser's table (dicts or Layers), or its own one."""
        return denoiser_layers if self.layer is None else [dict(self.layer)]

    def read(self, group, name: str, half: str, layer: str, step: int, store_path) -> np.ndarray:
        """[tokens, channels] of one (layer, step) from an image's store."""
        from .storage import array_path, read_chunk

        if self.layer is not None and layer != self.layer["name"]:
            raise KeyError(f"source {name!r} has one layer, {self.layer['name']!r}, not {layer!r}")
        if self.tokens == "latent":
            latent = np.asarray(read_chunk(group, "latents/xt", step, store_path))
            return latent.reshape(latent.shape[0], -1).T
        if self.tokens == "position":
            return position_features(*self.grid(group, name, layer))
        if self.tokens == "store":
            return np.asarray(read_chunk(group, array_path(name, half, layer), step, store_path))
        raise ValueError(f"source {name!r} has no tokens to probe")

    def grid(self, group, name: str, layer: str) -> tuple[int, int]:
        """The token grid (height, width) of a layer, from the store's own records."""
        if self.tokens in ("latent", "position"):
            return tuple(group["latents/xt"].shape[-2:])
        entries = (
            group.attrs["layers"]
            if self.layer is None
            else group.attrs.get("controls", {}).get(name, [])
        )
        for entry in entries:
            if entry["name"] == layer:
                return entry["height"], entry["width"]
        raise KeyError(f"layer {layer!r} of source {name!r} is not in the store's layer table")


DENOISER = Source(
    "denoiser", "{kind}", "{model} probe", "tab:blue", "-", None, PROBED, None, "store"
)
PERMUTED = Source(
    "permuted",
    "{kind}-permuted",
    "permuted {model} probe",
    "tab:gray",
    "--",
    "permuted_unet",
    PROBED,
    None,
    "store",
)
VAE = Source(
    "vae",
    "vae",
    "VAE decoder probe",
    "tab:green",
    "-.",
    "vae",
    GUIDED,
    {"name": "decoder.mid.0", "block": "vae.decoder.mid_block", "order": 0},
    "store",
)
LATENT = Source(
    "latent",
    "latent",
    "latent x_t probe",
    "tab:purple",
    ":",
    "latent",
    GUIDED,
    {"name": "xt", "block": "input", "order": 0},
    "latent",
)
POSITION = Source(
    "position",
    "position",
    "position alone",
    "tab:brown",
    (0, (1, 1)),
    "position",
    GUIDED,
    {"name": "grid", "block": "position", "order": 0},
    "position",
)
LABELER = Source(
    "labeler",
    "labeler",
    "labeler on preview",
    "tab:orange",
    "-",
    None,
    GUIDED,
    {"name": "preview", "block": "labeler", "order": 0},
    "",
)
# In the figures' order.
SOURCES = (DENOISER, PERMUTED, VAE, LATENT, POSITION, LABELER)
CONTROLS = tuple(source for source in SOURCES if source.control is not None)


def _kinds() -> list[str]:
    return sorted({backbone.kind for backbone in BACKBONES.values()})


def named(name: str) -> Source:
    """The declaration behind a source name (``unet``, ``vae``, ...)."""
    for source in SOURCES:
        if any(source.name(kind) == name for kind in _kinds()):
            return source
    raise KeyError(f"unknown source {name!r}")


def legend(name: str) -> str:
    """A source's legend in the figures: "U-Net probe", "latent x_t probe"."""
    labels = {backbone.kind: backbone.kind_label for backbone in BACKBONES.values()}
    source = named(name)
    kind = next((kind for kind in labels if source.name(kind) == name), None)
    return source.legend.format(model=labels.get(kind, kind))


def probed(config: dict, kind: str) -> list[str]:
    """Names of the sources this study probes: the denoiser and every enabled control."""
    return [DENOISER.name(kind)] + [
        source.name(kind) for source in CONTROLS if config["controls"][source.control]["enabled"]
    ]


def position_features(height: int, width: int) -> np.ndarray:
    """[height * width, k * l] cosine basis of the grid, tokens row-major as stored: feature
    (k, l) of token (i, j) is cos(pi (i + 1/2) k / height) cos(pi (j + 1/2) l / width), for the
    first ``POSITION_FREQUENCIES`` frequencies of each axis (all of them on a smaller grid)."""
    rows = _cosines(height)
    cols = _cosines(width)
    features = rows[:, None, :, None] * cols[None, :, None, :]
    return features.reshape(height * width, -1).astype(np.float32)


def _cosines(size: int) -> np.ndarray:
    frequencies = np.arange(min(POSITION_FREQUENCIES, size))
    return np.cos(np.pi * (np.arange(size)[:, None] + 0.5) * frequencies[None, :] / size)
