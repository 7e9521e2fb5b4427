"""Stable Diffusion 3 and 3.5: ``StableDiffusion3Pipeline`` with an ``SD3Transformer2DModel``
(MM-DiT: joint attention over text and image tokens; two CLIP encoders and T5).

Probed layers: ``transformer_blocks.<i>.attn``, the joint attention of each block. It returns
(image stream, text stream), each after its own output projection; the study reads the image
stream, one token per 2x2 latent patch, the same grid in every block. Names: ``block00``,
``block01``... SD3.5's second, image-only attention (``attn2`` of its first blocks) is not
probed. Flow matching: x0 = x_t - sigma v.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import (
    Backbone,
    Estimate,
    FlowMatching,
    WholeCallReplay,
    default_text_length,
    load_named_pipeline,
    load_on_meta,
    prompt_tokens,
    register,
    weights_like,
)
from .trace import Point

_PATH = re.compile(r"^transformer_blocks\.(?P<index>\d+)\.attn$")


def image_stream(output):
    return output[0]


def with_image_stream(output, tokens):
    return (tokens, *output[1:])


@register("stable-diffusion-3")
class StableDiffusion3(FlowMatching, WholeCallReplay, Backbone):
    pipeline_classes = ("StableDiffusion3Pipeline",)
    denoiser_attribute = "transformer"
    kind = "transformer"
    kind_label = "transformer"
    latent_factor = 8
    vae_module = "mid_block.attentions.0.to_out.0"

    def load_pipeline(self, path: Path, dtype):
        return load_named_pipeline(path, self.pipeline_classes, dtype)

    def load_denoiser_on_meta(self, path: Path):
        return load_on_meta("SD3Transformer2DModel", path, self.denoiser_attribute)

    def latent_shape(
        self, denoiser, height: int, width: int, factor: int | None = None
    ) -> tuple[int, int, int]:
        factor = factor or self.latent_factor
        return denoiser.config.in_channels, height // factor, width // factor

    def short_name(self, module_path: str) -> tuple[str, str] | None:
        match = _PATH.match(module_path)
        return match and (f"block{int(match['index']):02d}", "transformer_blocks")

    def point(self, name: str, module_path: str) -> Point:
        return Point(name, module_path, read=image_stream, write=with_image_stream)

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        import torch

        like = weights_like(denoiser)
        config = denoiser.config
        denoiser(
            hidden_states=torch.zeros(1, config.in_channels, latent_height, latent_width, **like),
            encoder_hidden_states=torch.zeros(1, 8, config.joint_attention_dim, **like),
            pooled_projections=torch.zeros(1, config.pooled_projection_dim, **like),
            timestep=torch.ones(1, **like),
        )

    def prompt_length(self, pipe, prompt: str) -> dict:
        # The pipeline's default max_sequence_length of T5; without T5, CLIP's 77 tokens.
        if pipe.tokenizer_3 is None:
            return prompt_tokens(pipe.tokenizer, prompt, pipe.tokenizer.model_max_length, "CLIP")
        return prompt_tokens(pipe.tokenizer_3, prompt, default_text_length(pipe), "T5")

    def call_sample(self, args, kwargs):
        return kwargs["hidden_states"]

    def vae_channels(self, vae) -> int:
        return vae.config.block_out_channels[-1]

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        paths = [f"transformer_blocks.{i}.attn" for i in range(config["num_layers"])]
        return self.uniform_estimate(
            config, height, width, paths, config.get("in_channels", 16), config.get("patch_size", 2)
        )
