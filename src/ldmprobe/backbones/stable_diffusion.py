"""Stable Diffusion 1.x and 2.x: ``StableDiffusionPipeline`` with a ``UNet2DConditionModel``.

Probed layers: every module whose name ends in ``attn1`` is a self-attention layer. The study
reads the output of its output projection (``attn1.to_out.0``), which equals the module's
output for SD's attention (no residual inside, rescale factor 1). Names are short and
path-safe: ``down0.1``, ``mid.0``, ``up3.2`` (``.t1`` and up for deeper transformers).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from ..core.compat import ensure_torchvision_importable
from . import Backbone, Estimate, register, weights_like
from .trace import Point

log = logging.getLogger(__name__)

_PATH = re.compile(
    r"^(?:(?P<kind>down|up)_blocks\.(?P<block>\d+)|mid_block)"
    r"\.attentions\.(?P<attention>\d+)\.transformer_blocks\.(?P<transformer>\d+)\.attn1$"
)
PROBED_OUTPUT = "to_out.0"  # the attn1 output projection, read for each layer
CROSS_ATTENTION_BLOCK = "CrossAttn"  # the block types whose transformers hold an attn1 module
MID_BLOCK_WITH_TRANSFORMER = "UNetMidBlock2DCrossAttn"


def layer_name(module_path: str) -> tuple[str, str]:
    """Short name and block of an attn1 module path."""
    match = _PATH.match(module_path)
    if match is None:
        # Unknown layouts still work: the full path is a valid, if long, name.
        return module_path.removesuffix(".attn1"), module_path.split(".attentions.")[0]
    if match["kind"] is None:
        short, block = "mid", "mid_block"
    else:
        short = f"{match['kind']}{match['block']}"
        block = f"{match['kind']}_blocks.{match['block']}"
    name = f"{short}.{match['attention']}"
    if match["transformer"] != "0":
        name += f".t{match['transformer']}"
    return name, block


def _per_block(value, count: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [value] * count


def attention_layers(
    unet_config: dict, latent_height: int, latent_width: int, naming=layer_name
) -> list:
    """Every self-attention layer (``layers.Layer``), in execution order, from config.json:
    the table ``discover_layers`` finds in the model, without torch. ``naming``: the family's
    short names of attn1 paths.

    Mirrors how diffusers' UNet2DConditionModel builds its blocks: a cross-attention down block
    holds ``layers_per_block`` transformers, an up block one more, the mid block one; each
    transformer holds ``transformer_layers_per_block`` attn1 modules. Down block i works at the
    latent size halved i times (stride-2 convs round up); up blocks mirror the down blocks.
    """
    from .layers import Layer

    down = unet_config["down_block_types"]
    up = unet_config["up_block_types"]
    channels = list(unet_config["block_out_channels"])
    n = len(down)
    per_block = _per_block(unet_config.get("layers_per_block", 2), n)
    depth = _per_block(unet_config.get("transformer_layers_per_block", 1), n)
    up_depth = unet_config.get("reverse_transformer_layers_per_block") or depth[::-1]
    up_depth = _per_block(up_depth, n)
    sizes = [(latent_height, latent_width)]
    for _ in range(n - 1):
        height, width = sizes[-1]
        sizes.append((math.ceil(height / 2), math.ceil(width / 2)))

    # (block prefix, attentions, transformers each, grid, channels) in execution order.
    blocks = []
    for i, block in enumerate(down):
        if CROSS_ATTENTION_BLOCK in block:
            blocks.append((f"down_blocks.{i}", per_block[i], depth[i], sizes[i], channels[i]))
    if unet_config.get("mid_block_type", MID_BLOCK_WITH_TRANSFORMER) == MID_BLOCK_WITH_TRANSFORMER:
        blocks.append(("mid_block", 1, depth[-1], sizes[-1], channels[-1]))
    for i, block in enumerate(up):
        level = n - 1 - i
        if CROSS_ATTENTION_BLOCK in block:
            blocks.append(
                (f"up_blocks.{i}", per_block[level] + 1, up_depth[i], sizes[level], channels[level])
            )
    layers = []
    for prefix, attentions, transformers, (height, width), width_channels in blocks:
        for attention in range(attentions):
            for transformer in range(transformers):
                path = f"{prefix}.attentions.{attention}.transformer_blocks.{transformer}.attn1"
                name, block = naming(path)
                index = attention * transformers + transformer
                layers.append(
                    Layer(name, path, block, index, len(layers), height, width, width_channels)
                )
    return layers


@register("stable-diffusion")
class StableDiffusion(Backbone):
    pipeline_classes = ("StableDiffusionPipeline",)
    denoiser_attribute = "unet"
    kind = "unet"
    kind_label = "U-Net"
    # Pixels per latent cell: the VAE's three stride-2 stages.
    latent_factor = 8
    # The VAE control: the output projection of the decoder's mid-block self-attention.
    vae_module = "mid_block.attentions.0.to_out.0"

    def load_pipeline(self, path: Path, dtype):
        ensure_torchvision_importable()
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(
            path,
            dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            use_safetensors=True,
        )

    def load_denoiser_on_meta(self, path: Path):
        ensure_torchvision_importable()
        import torch
        from diffusers import UNet2DConditionModel

        config = UNet2DConditionModel.load_config(path, subfolder=self.denoiser_attribute)
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config)

    def latent_shape(
        self, denoiser, height: int, width: int, factor: int | None = None
    ) -> tuple[int, int, int]:
        return (
            denoiser.config.in_channels,
            height // (factor or self.latent_factor),
            width // (factor or self.latent_factor),
        )

    @staticmethod
    def short_name(module_path: str) -> tuple[str, str]:
        """Short name and block of an attn1 path: the discovered and the estimated tables'."""
        return layer_name(module_path)

    def probed_modules(self, denoiser) -> dict[str, tuple[str, str]]:
        return {
            path: self.short_name(path)
            for path, _module in denoiser.named_modules()
            if path.endswith("attn1")
        }

    def point(self, name: str, module_path: str) -> Point:
        return Point(name, f"{module_path}.{PROBED_OUTPUT}")

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        import torch

        like = weights_like(denoiser)
        config = denoiser.config
        denoiser(
            torch.zeros(1, config.in_channels, latent_height, latent_width, **like),
            torch.tensor(1, **like),
            encoder_hidden_states=torch.zeros(1, 77, config.cross_attention_dim, **like),
        )

    def prompt_length(self, pipe, prompt: str) -> dict:
        tokenizer = pipe.tokenizer
        ids = tokenizer(prompt, truncation=False).input_ids
        limit = tokenizer.model_max_length
        truncated = len(ids) > limit
        if truncated:
            log.warning(
                "prompt is %d tokens; the text encoder sees only the first %d (truncated)",
                len(ids),
                limit,
            )
        return {"prompt_tokens": len(ids), "prompt_truncated": truncated}

    def replay_inputs(self, args, kwargs) -> dict:
        sample = self.call_sample(args, kwargs)
        embeddings = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        return {
            "sample": sample.detach(),
            "timestep": self.call_timestep(args, kwargs),
            "encoder_hidden_states": embeddings.detach(),
        }

    def vae_channels(self, vae) -> int:
        # The decoder's mid block runs on the latent grid, with the decoder's widest channels.
        return vae.config.block_out_channels[-1]

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        latent_h, latent_w = height // self.latent_factor, width // self.latent_factor
        table = attention_layers(config, latent_h, latent_w, self.short_name)
        return Estimate(
            layers=[(layer.height * layer.width, layer.channels) for layer in table],
            latent=(config.get("in_channels", 4), latent_h, latent_w),
            table=table,
        )
