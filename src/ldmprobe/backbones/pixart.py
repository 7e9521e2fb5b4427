"""PixArt-Σ and PixArt-α: ``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline`` with a
``PixArtTransformer2DModel`` (a DiT with a T5 text encoder).

Probed layers: ``transformer_blocks.<i>.attn1``, pure image self-attention (the text comes in
through ``attn2``); every block works on the same token grid (the latent in 2x2 patches).
Names: ``block00``, ``block01``... (two digits: they sort in execution order).

Which tensor: the output of ``attn1``'s output projection (``attn1.to_out.0``), as for SD. The
block multiplies it by ``gate_msa`` (adaLN-single: one value per channel, from the timestep)
before adding it to the residual stream. The gated tensor is no module's output, and the gate
is the same for every token of an image at a step, so a linear probe of one (layer, step) cell
sees the same information either way (a per-channel scale folds into its weights); the
ungated output is also the tensor an intervention edits, upstream of the gate.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import (
    Backbone,
    Estimate,
    WholeCallReplay,
    default_text_length,
    load_named_pipeline,
    load_on_meta,
    prompt_tokens,
    register,
    weights_like,
)
from .trace import Point

_PATH = re.compile(r"^transformer_blocks\.(?P<index>\d+)\.attn1$")
PROBED_OUTPUT = "to_out.0"


@register("pixart")
class PixArt(WholeCallReplay, Backbone):
    pipeline_classes = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
    denoiser_attribute = "transformer"
    kind = "transformer"
    kind_label = "transformer"
    latent_factor = 8  # SD's VAE
    vae_module = "mid_block.attentions.0.to_out.0"
    # The study sets the exact size: binning would move it to the nearest trained aspect ratio.
    # clean_caption: the prompt reaches T5 as written (as in the other families), whatever
    # optional packages (bs4, ftfy) are installed.
    pipeline_kwargs = {"use_resolution_binning": False, "clean_caption": False}

    def load_pipeline(self, path: Path, dtype):
        return load_named_pipeline(path, self.pipeline_classes, dtype)

    def load_denoiser_on_meta(self, path: Path):
        return load_on_meta("PixArtTransformer2DModel", path, self.denoiser_attribute)

    def latent_shape(
        self, denoiser, height: int, width: int, factor: int | None = None
    ) -> tuple[int, int, int]:
        factor = factor or self.latent_factor
        return denoiser.config.in_channels, height // factor, width // factor

    def short_name(self, module_path: str) -> tuple[str, str] | None:
        match = _PATH.match(module_path)
        return match and (f"block{int(match['index']):02d}", "transformer_blocks")

    def point(self, name: str, module_path: str) -> Point:
        return Point(name, f"{module_path}.{PROBED_OUTPUT}")

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        import torch

        like = weights_like(denoiser)
        config = denoiser.config
        conditions = {"resolution": None, "aspect_ratio": None}
        if denoiser.use_additional_conditions:  # PixArt-α at 1024 px
            conditions = {
                "resolution": torch.ones(1, 2, **like),
                "aspect_ratio": torch.ones(1, 1, **like),
            }
        denoiser(
            torch.zeros(1, config.in_channels, latent_height, latent_width, **like),
            encoder_hidden_states=torch.zeros(1, 8, config.caption_channels, **like),
            timestep=torch.ones(1, **like),
            added_cond_kwargs=conditions,
        )

    def prompt_length(self, pipe, prompt: str) -> dict:
        # T5 sees the pipeline's max_sequence_length tokens (Σ: 300, α: 120).
        return prompt_tokens(pipe.tokenizer, prompt, default_text_length(pipe), "T5")

    def call_prediction(self, output):
        # PixArt predicts the noise and its variance (out_channels = 2 x in_channels); the
        # pipeline steps with the noise half, and so does the x0 preview.
        return output[0].chunk(2, dim=1)[0]

    def vae_channels(self, vae) -> int:
        return vae.config.block_out_channels[-1]

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        paths = [f"transformer_blocks.{i}.attn1" for i in range(config["num_layers"])]
        return self.uniform_estimate(
            config, height, width, paths, config.get("in_channels", 4), config.get("patch_size", 2)
        )
