"""The full-size Stable Diffusion v1.x architecture with random weights, for GPU benchmarks.

The configs are those of ``CompVis/stable-diffusion-v1-4`` (U-Net, VAE, CLIP ViT-L/14 text
encoder), written out here because no weights or hub access are available. The tokenizer is
the demo's byte-level one: the text encoder always sees 77 positions, so its cost does not
depend on the vocabulary. The saved folder loads through ``ldmprobe.models`` like real weights.
"""

from __future__ import annotations

import json
from pathlib import Path

UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
}

TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}


def unet_on_meta():
    """The full-size U-Net's structure without weights: layer discovery and counting."""
    import torch

    from ldmprobe.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**UNET_CONFIG)


def build_full_size_sd(out_dir: Path, seed: int = 0, dtype: str = "float16") -> None:
    """Save a random-weight SD v1.4-architecture pipeline to ``out_dir`` (about 2 GB in fp16)."""
    import torch

    from ldmprobe.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from diffusers import (
        AutoencoderKL,
        LMSDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ldmprobe.core.io import atomic_directory
    from ldmprobe.models.demo_models import clip_byte_vocabulary

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(vocab=clip_byte_vocabulary(), merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **TEXT_CONFIG,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = LMSDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE_CONFIG),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET_CONFIG),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype=getattr(torch, dtype))
    with atomic_directory(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "ldmprobe-bench.json").write_text(
            json.dumps({"architecture": "sd-v1.4", "seed": seed, "weights": "random"})
        )
