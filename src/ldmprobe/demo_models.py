"""Small models of the real architectures, random weights, saved the way real weights are.

The offline demo and the tests load these back through ``ldmprobe.models`` exactly as they
would load Stable Diffusion or DPT from the Hugging Face cache. Block types match the real
models (so the U-Net keeps all 16 self-attention layers and their token grid); only widths
and depths are small.
"""

from __future__ import annotations

import json
from pathlib import Path

from .compat import ensure_torchvision_importable
from .io import atomic_directory


def clip_byte_vocabulary() -> dict[str, int]:
    """A byte-level CLIP vocabulary: every byte as a character, with and without '</w>'.

    CLIP's tokenizer maps bytes to printable characters before BPE (the GPT-2 byte map); with
    one token per mapped byte and no merges, any text tokenizes without an unknown token.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    byte_to_char = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(256 + shifted)
            shifted += 1
    chars = [byte_to_char[b] for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def build_stable_diffusion(out_dir: Path, seed: int) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        LMSDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=512,
    )
    vocabulary = clip_byte_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # The reference scheduler settings of SD v1.x (REFERENCE.md).
    scheduler = LMSDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_dpt_depth(out_dir: Path, seed: int) -> None:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=128,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_in_index=-1,
    )
    DPTForDepthEstimation(config).save_pretrained(out_dir, safe_serialization=True)
    DPTImageProcessor(
        size={"height": 128, "width": 128},
        keep_aspect_ratio=False,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out_dir)


BUILDERS = {
    "stable-diffusion": build_stable_diffusion,
    "dpt-depth": build_dpt_depth,
}


def build_demo_model(kind: str, out_dir: str | Path, seed: int = 0) -> None:
    """Build one demo model of ``kind`` into ``out_dir`` atomically."""
    ensure_torchvision_importable()
    with atomic_directory(out_dir) as tmp:
        BUILDERS[kind](tmp, seed)
        (tmp / "ldmprobe-demo.json").write_text(
            json.dumps({"kind": kind, "seed": seed, "weights": "random"}, indent=2)
        )
