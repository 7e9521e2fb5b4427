"""Controls probed beside the U-Net, each a source of activations with its own array paths.

* ``unet-permuted`` (Chen et al.'s control): every weight tensor of the U-Net permuted in place
  with a fixed seed, biases kept, run on the very inputs (latent, timestep, text embeddings) the
  real U-Net saw at each call, so images and labels are the study's own.
* ``vae``: the VAE decoder's mid-block self-attention while it decodes each step's latent.
* ``latent``: the noisy latent x_t itself (4 channels on the latent grid), the U-Net's input:
  what a linear probe reads without any network.
* ``labeler`` is no activation source: it names the rows of the off-the-shelf labeler run on
  each step's preview and scored against the final image's label.

The VAE and latent arrays are not one CFG half (they come from the guided trajectory), so their
half is ``guided``. The workflow imports this module at parse time: torch only inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

UNET = "unet"
PERMUTED = "unet-permuted"
VAE = "vae"
LATENT = "latent"
LABELER = "labeler"
UNET_SOURCES = (UNET, PERMUTED)
GUIDED = "guided"

VAE_LAYER = "decoder.mid.0"
LATENT_LAYER = "xt"
LABELER_LAYER = "preview"

# Rows of the tables for sources without a U-Net layer table.
SINGLE_LAYERS = {
    VAE: {"name": VAE_LAYER, "block": "vae.decoder.mid_block", "order": 0},
    LATENT: {"name": LATENT_LAYER, "block": "input", "order": 0},
    LABELER: {"name": LABELER_LAYER, "block": "labeler", "order": 0},
}


def layers_by_source(unet_layers: list[dict]) -> dict[str, list[dict]]:
    """Per source, its layers as {name, block, order}: the tables' layer columns."""
    return {
        UNET: unet_layers,
        PERMUTED: unet_layers,
        **{source: [layer] for source, layer in SINGLE_LAYERS.items()},
    }


def half_of(source: str, probe_half: str) -> str:
    return probe_half if source in UNET_SOURCES else GUIDED


def permute_weights(module: torch.nn.Module, seed: int) -> int:
    """Permute the elements of every ``*weight`` parameter in place; biases are kept.

    One generator seeded once walks the parameters in ``named_parameters`` order, so the
    permutation depends only on the seed and the architecture. Returns the number of tensors.
    """
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith("weight"):
                continue
            order = torch.randperm(param.numel(), generator=generator).to(param.device)
            param.copy_(param.flatten()[order].view_as(param))
            count += 1
    return count


def vae_attention(vae) -> torch.nn.Module:
    """The output projection of the VAE decoder's mid-block self-attention."""
    attentions = vae.decoder.mid_block.attentions
    if attentions is None or len(attentions) == 0:
        raise ValueError("this VAE's decoder mid block has no self-attention to probe")
    return attentions[0].to_out[0]


def read_tokens(group, source: str, half: str, layer: str, step: int, store_path) -> np.ndarray:
    """[tokens, channels] of one (source, layer, step) from an image's store."""
    from .storage import array_path, read_chunk

    if source == LATENT:
        if layer != LATENT_LAYER:
            raise KeyError(f"source 'latent' has one layer, {LATENT_LAYER!r}, not {layer!r}")
        latent = np.asarray(read_chunk(group, "latents/xt", step, store_path))
        return latent.reshape(latent.shape[0], -1).T
    return np.asarray(read_chunk(group, array_path(source, half, layer), step, store_path))


def token_grid(group, source: str, layer: str) -> tuple[int, int]:
    """The token grid (height, width) of a layer, from the store's own records."""
    if source == LATENT:
        return tuple(group["latents/xt"].shape[-2:])
    if source in UNET_SOURCES:
        entries = group.attrs["layers"]
    else:
        entries = group.attrs.get("controls", {}).get(source, [])
    for entry in entries:
        if entry["name"] == layer:
            return entry["height"], entry["width"]
    raise KeyError(f"layer {layer!r} of source {source!r} is not in the store's layer table")
