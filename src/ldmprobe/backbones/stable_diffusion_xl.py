"""Stable Diffusion XL: ``StableDiffusionXLPipeline`` with a ``UNet2DConditionModel``.

The U-Net's blocks are SD's, with deeper transformers (depth 1, 2 and 10 at full size: 70
``attn1`` modules), so each name carries its transformer index: ``down1.0.t0``, ``down2.1.t7``,
``mid.0.t9``, ``up0.2.t3``; names sort in execution order within a block, and patterns select
by block (``down2.*``), by attention (``up0.2.*``) or by transformer index (``*.t0``). The
probed tensor is SD's: the ``attn1`` output projection. Each U-Net call also carries the
pooled text embedding of the second encoder and the size conditioning (``added_cond_kwargs``),
which a replay passes on unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import WholeCallReplay, load_named_pipeline, prompt_tokens, register, weights_like
from . import stable_diffusion as sd

_TRANSFORMER = re.compile(r"\.t\d+$")
# SDXL's size conditioning: original size, crop corner, target size (two numbers each).
TIME_IDS = 6


def layer_name(module_path: str) -> tuple[str, str]:
    """SD's short name, with the transformer index always written (``.t0`` too)."""
    name, block = sd.layer_name(module_path)
    return (name if _TRANSFORMER.search(name) else f"{name}.t0"), block


@register("stable-diffusion-xl")
class StableDiffusionXL(WholeCallReplay, sd.StableDiffusion):
    pipeline_classes = ("StableDiffusionXLPipeline",)

    def load_pipeline(self, path: Path, dtype):
        # No invisible watermark: it would change the images the labelers see.
        return load_named_pipeline(path, self.pipeline_classes, dtype, add_watermarker=False)

    short_name = staticmethod(layer_name)

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        import torch

        like = weights_like(denoiser)
        config = denoiser.config
        pooled = config.projection_class_embeddings_input_dim - (
            TIME_IDS * config.addition_time_embed_dim
        )
        denoiser(
            torch.zeros(1, config.in_channels, latent_height, latent_width, **like),
            torch.tensor(1, **like),
            encoder_hidden_states=torch.zeros(1, 77, config.cross_attention_dim, **like),
            added_cond_kwargs={
                "text_embeds": torch.zeros(1, pooled, **like),
                "time_ids": torch.zeros(1, TIME_IDS, **like),
            },
        )

    def prompt_length(self, pipe, prompt: str) -> dict:
        # Both CLIP encoders read the same 77 tokens.
        return prompt_tokens(pipe.tokenizer, prompt, pipe.tokenizer.model_max_length, "CLIP")

    def decode(self, vae, latent):
        import torch

        if vae.dtype != torch.float16 or not vae.config.force_upcast:
            return super().decode(vae, latent)
        # SDXL's VAE overflows in float16; its pipeline decodes in float32 as well.
        vae.to(torch.float32)
        try:
            return super().decode(vae, latent.float())
        finally:
            vae.to(torch.float16)
