"""Flux: ``FluxPipeline`` with a ``FluxTransformer2DModel`` (CLIP pooled + T5 text).

Probed layers, in execution order:

* ``transformer_blocks.<i>.attn`` (double-stream blocks, named ``double00``...): joint
  attention returning (image stream, text stream) after their output projections; the study
  reads the image stream;
* ``single_transformer_blocks.<i>.attn`` (single-stream blocks, ``single00``...): attention
  over the text tokens followed by the image tokens, with no output projection of its own (the
  block projects it together with its MLP); the study reads the image tokens, those after the
  pipeline's ``max_sequence_length`` text tokens (set to ``TEXT_TOKENS`` in every call).

Every layer has one token per 2x2 latent patch. The pipeline packs the latent into those
patches (``pack_latents``). Flux is guidance-distilled: the guidance scale is an input of the
transformer and each call is a batch of one image, the conditional one, so ``batch_halves``
holds ``cond`` only and ``uncond`` is a configuration error. Flow matching: x0 = x_t - sigma v.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import (
    Backbone,
    Estimate,
    FlowMatching,
    WholeCallReplay,
    load_named_pipeline,
    load_on_meta,
    prompt_tokens,
    register,
    weights_like,
)
from .trace import Point

_PATH = re.compile(r"^(?P<stream>single_transformer|transformer)_blocks\.(?P<index>\d+)\.attn$")
TEXT_TOKENS = 512  # FLUX.1-dev's T5 length, passed to the pipeline


def image_stream(output):
    return output[0]


def with_image_stream(output, tokens):
    return (tokens, *output[1:])


def image_tokens(output):
    return output[:, TEXT_TOKENS:]


def with_image_tokens(output, tokens):
    import torch

    return torch.cat([output[:, :TEXT_TOKENS], tokens], dim=1)


@register("flux")
class Flux(FlowMatching, WholeCallReplay, Backbone):
    pipeline_classes = ("FluxPipeline",)
    denoiser_attribute = "transformer"
    kind = "transformer"
    kind_label = "transformer"
    latent_factor = 8
    vae_module = "mid_block.attentions.0.to_out.0"
    pipeline_kwargs = {"max_sequence_length": TEXT_TOKENS}

    def load_pipeline(self, path: Path, dtype):
        return load_named_pipeline(path, self.pipeline_classes, dtype)

    def load_denoiser_on_meta(self, path: Path):
        return load_on_meta("FluxTransformer2DModel", path, self.denoiser_attribute)

    def latent_shape(
        self, denoiser, height: int, width: int, factor: int | None = None
    ) -> tuple[int, int, int]:
        # The transformer's input channels are the latent's times the 2x2 patch.
        factor = factor or self.latent_factor
        return denoiser.config.in_channels // 4, height // factor, width // factor

    def pack_latents(self, noise):
        batch, channels, height, width = noise.shape
        patches = noise.view(batch, channels, height // 2, 2, width // 2, 2)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * 4)

    def unpack_latents(self, tensor, latent_shape: tuple[int, int, int]):
        channels, height, width = latent_shape
        patches = tensor.view(tensor.shape[0], height // 2, width // 2, channels, 2, 2)
        return patches.permute(0, 3, 1, 4, 2, 5).reshape(tensor.shape[0], *latent_shape)

    def short_name(self, module_path: str) -> tuple[str, str] | None:
        match = _PATH.match(module_path)
        if not match:
            return None
        single = match["stream"] == "single_transformer"
        name = f"{'single' if single else 'double'}{int(match['index']):02d}"
        return name, module_path.rsplit(".", 2)[0]

    def point(self, name: str, module_path: str) -> Point:
        if module_path.startswith("single_"):
            return Point(name, module_path, read=image_tokens, write=with_image_tokens)
        return Point(name, module_path, read=image_stream, write=with_image_stream)

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        import torch

        like = weights_like(denoiser)
        config = denoiser.config
        tokens = (latent_height // 2) * (latent_width // 2)
        denoiser(
            hidden_states=torch.zeros(1, tokens, config.in_channels, **like),
            encoder_hidden_states=torch.zeros(1, TEXT_TOKENS, config.joint_attention_dim, **like),
            pooled_projections=torch.zeros(1, config.pooled_projection_dim, **like),
            timestep=torch.ones(1, **like),
            img_ids=torch.zeros(tokens, 3, **like),
            txt_ids=torch.zeros(TEXT_TOKENS, 3, **like),
            guidance=torch.ones(1, **like) if config.guidance_embeds else None,
        )

    def batch_halves(self, guidance_scale: float) -> tuple[str, ...]:
        return ("cond",)

    def no_uncond_reason(self, guidance_scale: float) -> str:
        return (
            "flux is guidance-distilled: the guidance scale is an input of its transformer and "
            "each call holds one image, the conditional one (no CFG batch)"
        )

    def prompt_length(self, pipe, prompt: str) -> dict:
        # CLIP gives only the pooled embedding; the tokens the transformer sees are T5's.
        return prompt_tokens(pipe.tokenizer_2, prompt, TEXT_TOKENS, "T5")

    def call_timestep(self, args, kwargs):
        # The pipeline passes the scheduler's timestep / 1000.
        return kwargs["timestep"] * 1000

    def call_sample(self, args, kwargs):
        return kwargs["hidden_states"]

    def vae_channels(self, vae) -> int:
        return vae.config.block_out_channels[-1]

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        # Execution order: every double-stream block, then every single-stream block.
        paths = [f"transformer_blocks.{i}.attn" for i in range(config["num_layers"])] + [
            f"single_transformer_blocks.{i}.attn" for i in range(config["num_single_layers"])
        ]
        # The transformer's input channels are the latent's times the 2x2 patch.
        return self.uniform_estimate(
            config, height, width, paths, config.get("in_channels", 64) // 4
        )
