"""Small models of the real architectures, random weights, saved the way real weights are.

The offline demo and the tests load these back through ``ldmprobe.models`` exactly as they
would load Stable Diffusion or DPT from the Hugging Face cache. Block types match the real
models (so the U-Net keeps all 16 self-attention layers and their token grid); only widths
and depths are small.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.compat import ensure_torchvision_importable
from ..core.io import atomic_directory
from ..core.provenance import VERSION_KEY, package_version


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
    """SD v1.x: conv projections in the transformers, one head width, LMS, epsilon, 512 px."""
    from diffusers import LMSDiscreteScheduler

    # The reference scheduler settings of SD v1.x (REFERENCE.md).
    scheduler = LMSDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    save_stable_diffusion(out_dir, seed, {"sample_size": 64, "attention_head_dim": 8}, scheduler)


def build_stable_diffusion_2(out_dir: Path, seed: int) -> None:
    """SD v2.1 (768 px, ``stabilityai/stable-diffusion-2-1``): linear projections in the
    transformers, heads per block, attention upcast to fp32, DDIM with v-prediction."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    unet = {
        "sample_size": 96,
        "attention_head_dim": (2, 4, 4, 4),
        "use_linear_projection": True,
        "upcast_attention": True,
    }
    save_stable_diffusion(out_dir, seed, unet, scheduler, image_size=768)


def save_stable_diffusion(
    out_dir: Path, seed: int, unet_options: dict, scheduler, image_size: int = 512
) -> None:
    """A small pipeline with SD's block types: every self-attention layer and token grid."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        norm_num_groups=8,
        **unet_options,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=image_size,
    )
    text_encoder, tokenizer = tiny_clip()
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


def tiny_clip(hidden: int = 32, projection: int | None = None, layers: int = 2):
    """A CLIP text encoder of ``layers`` layers and its byte-level tokenizer (77 tokens); with
    ``projection``, the encoder with the text projection (SDXL's and SD3's second encoder)."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocabulary = clip_byte_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=len(vocabulary),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection or hidden,
    )
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model, tokenizer


def tiny_t5(d_model: int = 32, max_length: int = 512):
    """A 2-layer T5 encoder and a unigram tokenizer built from Python objects: every printable
    ASCII character, alone and after a word boundary ('▁'), so any English prompt tokenizes."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    chars = [chr(code) for code in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config), tokenizer


def tiny_vae(image_size: int, latent_channels: int = 4, **options):
    """A VAE with 4 blocks (scale factor 8, as the real ones) and small widths."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=image_size,
        **options,
    )


def build_stable_diffusion_xl(out_dir: Path, seed: int) -> None:
    """SDXL (``stabilityai/stable-diffusion-xl-base-1.0``): SDXL's block types (no attention at
    the first level, deeper transformers below, 1/2/3 here for 1/2/10), two CLIP encoders (the
    second with the pooled projection), size conditioning, Euler with 1024 px defaults."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    text_encoder, tokenizer = tiny_clip(32)
    text_encoder_2, tokenizer_2 = tiny_clip(32, projection=32)
    time_embed = 8
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed,
        # The pooled embedding of the second encoder and the six size numbers.
        projection_class_embeddings_input_dim=32 + 6 * time_embed,
        cross_attention_dim=64,  # both encoders' hidden states side by side
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    StableDiffusionXLPipeline(
        vae=tiny_vae(1024, force_upcast=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        add_watermarker=False,
    ).save_pretrained(out_dir, safe_serialization=True)


def save_pixart(out_dir: Path, seed: int, pipeline: str, sample_size: int, text: int) -> None:
    """PixArt's DiT (adaLN-single, learned sigma, 2x2 patches), T5 and SD's VAE; DPM-Solver."""
    import diffusers
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(seed)
    text_encoder, tokenizer = tiny_t5(32, max_length=text)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=4,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=32,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", steps_offset=1
    )
    getattr(diffusers, pipeline)(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_vae(sample_size * 8),
        transformer=transformer,
        scheduler=scheduler,
    ).save_pretrained(out_dir, safe_serialization=True)


def build_pixart_sigma(out_dir: Path, seed: int) -> None:
    """PixArt-Σ (``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``): T5 of 300 tokens."""
    save_pixart(out_dir, seed, "PixArtSigmaPipeline", sample_size=128, text=300)


def build_pixart_alpha(out_dir: Path, seed: int) -> None:
    """PixArt-α (``PixArt-alpha/PixArt-XL-2-512x512``): T5 of 120 tokens."""
    save_pixart(out_dir, seed, "PixArtAlphaPipeline", sample_size=64, text=120)


def build_stable_diffusion_3(out_dir: Path, seed: int) -> None:
    """SD3 (``stabilityai/stable-diffusion-3.5-medium``): MM-DiT with joint attention (and
    SD3.5's image-only second attention in the first block), QK RMS norm, two CLIP encoders
    with projections and T5, a 16-channel VAE with shift, flow-matching Euler (shift 3)."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    text_encoder, tokenizer = tiny_clip(32, projection=32)
    text_encoder_2, tokenizer_2 = tiny_clip(32, projection=32)
    text_encoder_3, tokenizer_3 = tiny_t5(64, max_length=256)
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width; the CLIP states (32 + 32) are padded to it
        caption_projection_dim=32,
        pooled_projection_dim=64,  # both CLIP projections side by side
        pos_embed_max_size=96,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = tiny_vae(1024, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609)
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    ).save_pretrained(out_dir, safe_serialization=True)


def build_flux(out_dir: Path, seed: int) -> None:
    """FLUX.1-dev (``black-forest-labs/FLUX.1-dev``): double- and single-stream blocks, guidance
    embedding, CLIP (pooled) and T5, a 16-channel VAE with shift and no quant convs, packed
    latents, flow-matching Euler with the image-size shift."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    text_encoder, tokenizer = tiny_clip(32)
    text_encoder_2, tokenizer_2 = tiny_t5(32, max_length=512)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x a 2x2 patch
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = tiny_vae(
        1024,
        latent_channels=16,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    ).save_pretrained(out_dir, safe_serialization=True)


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


def build_vgg16(out_dir: Path, seed: int) -> None:
    """timm's VGG-16 with random weights, saved in the Hugging Face hub layout of
    ``timm/vgg16.tv_in1k`` (config.json with its preprocessing, model.safetensors)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    save_for_hf(timm.create_model("vgg16", pretrained=False), out_dir, safe_serialization=True)


def tiny_dpt_hybrid():
    """DPT-Hybrid (``Intel/dpt-hybrid-midas``) and its image processor: a ViT on the feature
    map of a BiT ResNet, small widths."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    backbone = BitConfig(
        global_padding="same",
        layer_type="bottleneck",
        depths=[1, 1, 1],
        hidden_sizes=[16, 32, 64],
        embedding_size=16,
        out_features=["stage1", "stage2", "stage3"],
        embedding_dynamic_padding=True,
        num_groups=8,
    )
    config = DPTConfig(
        is_hybrid=True,
        backbone_config=backbone,
        backbone_featmap_shape=[1, 64, 8, 8],
        image_size=128,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 32, 32, 32],
        fusion_hidden_size=16,
        readout_type="project",
    )
    processor = DPTImageProcessor(
        size={"height": 128, "width": 128}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return DPTForDepthEstimation(config), processor


def build_dpt_hybrid_depth(out_dir: Path, seed: int) -> None:
    """DPT-Hybrid (``Intel/dpt-hybrid-midas``): a ViT on the feature map of a BiT ResNet."""
    import torch

    torch.manual_seed(seed)
    model, processor = tiny_dpt_hybrid()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)


def build_stable_diffusion_2_depth(out_dir: Path, seed: int) -> None:
    """SD 2 depth (``stabilityai/stable-diffusion-2-depth``, 512 px): SD 2's U-Net (linear
    projections, heads per block) with 5 input channels (the latents and the depth map), a
    DPT-Hybrid depth estimator with its image processor, PNDM with epsilon prediction."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=5,
        out_channels=4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=(2, 4, 4, 4),
        use_linear_projection=True,
    )
    text_encoder, tokenizer = tiny_clip(32)
    depth_estimator, feature_extractor = tiny_dpt_hybrid()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=tiny_vae(512),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        depth_estimator=depth_estimator,
        feature_extractor=feature_extractor,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def build_dpt_beit_depth(out_dir: Path, seed: int) -> None:
    """DPT with a BEiT backbone (MiDaS v3.1, ``Intel/dpt-beit-large-512``)."""
    import torch
    from transformers import BeitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = BeitConfig(
        image_size=128,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        use_relative_position_bias=True,
        use_mask_token=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DPTConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],
        # The head's extra projection (MiDaS v3.1) is built for 256 fusion channels.
        fusion_hidden_size=256,
        hidden_size=32,
        head_in_index=-1,
        add_projection=True,
        use_bias_in_fusion_residual=False,
    )
    DPTForDepthEstimation(config).save_pretrained(out_dir, safe_serialization=True)
    DPTImageProcessor(
        size={"height": 128, "width": 128},
        keep_aspect_ratio=True,
        ensure_multiple_of=32,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    ).save_pretrained(out_dir)


def build_depth_anything(out_dir: Path, seed: int) -> None:
    """Depth Anything V2 (``depth-anything/Depth-Anything-V2-Small-hf``): DINOv2 and a DPT head;
    its processor keeps the aspect ratio and sizes inputs to a multiple of 14."""
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = Dinov2Config(
        image_size=70,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(out_dir, safe_serialization=True)
    # The real processor's settings, at 70 instead of 518 px.
    DPTImageProcessor(
        do_resize=True,
        size={"height": 70, "width": 70},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out_dir)


def build_tracer_saliency(out_dir: Path, seed: int) -> None:
    """carvekit's TRACER-B7 (EfficientNet-B7 encoder, fixed size), its state dict as carvekit
    stores it (``tracer_b7.pth``), in float16 to halve the file (loading casts it back)."""
    import torch
    from carvekit.ml.wrap.tracer_b7 import TracerUniversalB7

    torch.manual_seed(seed)
    weights = out_dir / "tracer_b7.pth"
    model = TracerUniversalB7(load_pretrained=False, model_path=weights)
    torch.save({name: value.half() for name, value in model.state_dict().items()}, weights)


def u2net_lite(mid: int = 16, out: int = 64) -> dict:
    """U²-Net-lite (U²-Net†, "u2netp"), the small configuration of the U²-Net paper, in the
    layout of carvekit's U2NETArchitecture: stage -> [name, (height, in, mid, out[, dilated]),
    side]. The paper's widths are mid 16, out 64."""
    encoder = [(7, False), (6, False), (5, False), (4, False), (4, True), (4, True)]
    stages = {}
    for level, (height, dilated) in enumerate(encoder, start=1):
        widths = (height, 3 if level == 1 else out, mid, out) + ((True,) if dilated else ())
        stages[f"stage{level}"] = [f"En_{level}", widths, out if level == 6 else -1]
    for level in range(5, 0, -1):
        height, dilated = encoder[level - 1]
        widths = (height, 2 * out, mid, out) + ((True,) if dilated else ())
        stages[f"stage{level}d"] = [f"De_{level}", widths, out]
    return stages


def build_rembg_u2netp(out_dir: Path, seed: int) -> None:
    """rembg's ``u2netp`` session file: U²-Net-lite exported to ONNX as rembg's own file was
    (input 1x3x320x320, first output the fused sigmoid map). BiRefNet and ISNet are not
    buildable from a library, so U²-Net-lite stands in for rembg's sessions. A quarter of the
    paper's widths: rembg always runs it at 320 px, and the full widths cost the demo about
    0.5 s of CPU per image."""
    import torch
    from carvekit.ml.arch.u2net.u2net import U2NETArchitecture

    class SideOutputs(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            return tuple(self.net(image))

    torch.manual_seed(seed)
    net = SideOutputs(U2NETArchitecture(u2net_lite(mid=4, out=16), out_ch=1)).eval()
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 320, 320),),
        str(out_dir / "u2netp.onnx"),
        dynamo=False,
        input_names=["input.1"],
        opset_version=17,
    )


def build_marigold_shading(out_dir: Path, seed: int) -> None:
    """A Marigold intrinsics pipeline shaped like ``prs-eth/marigold-iid-lighting-v1-1``:
    an SD2-style U-Net (linear projections, per-block heads) taking the image latent and three
    target latents (16 in, 12 out), a VAE with scale factor 8, an empty-prompt CLIP encoder,
    DDIM with v-prediction and trailing timesteps, targets albedo, shading, residual."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        MarigoldIntrinsicsPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=16,
        out_channels=12,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 4, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    text_encoder, tokenizer = tiny_clip(layers=1)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    pipe = MarigoldIntrinsicsPipeline(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        prediction_type="intrinsics",
        target_properties={
            "target_names": ["albedo", "shading", "residual"],
            "albedo": {"prediction_space": "srgb"},
            "shading": {"prediction_space": "linear", "up_to_scale": True},
            "residual": {"prediction_space": "linear", "up_to_scale": True},
        },
        default_denoising_steps=4,
        default_processing_resolution=768,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


BUILDERS = {
    "stable-diffusion": build_stable_diffusion,
    "stable-diffusion-2": build_stable_diffusion_2,
    "stable-diffusion-2-depth": build_stable_diffusion_2_depth,
    "stable-diffusion-xl": build_stable_diffusion_xl,
    "pixart-sigma": build_pixart_sigma,
    "pixart-alpha": build_pixart_alpha,
    "stable-diffusion-3": build_stable_diffusion_3,
    "flux": build_flux,
    "dpt-depth": build_dpt_depth,
    "dpt-hybrid-depth": build_dpt_hybrid_depth,
    "dpt-beit-depth": build_dpt_beit_depth,
    "depth-anything": build_depth_anything,
    "tracer-saliency": build_tracer_saliency,
    "rembg-u2netp": build_rembg_u2netp,
    "marigold-shading": build_marigold_shading,
    "vgg16": build_vgg16,
}


def build_demo_model(kind: str, out_dir: str | Path, seed: int = 0) -> None:
    """Build one demo model of ``kind`` into ``out_dir`` atomically."""
    ensure_torchvision_importable()
    with atomic_directory(out_dir) as tmp:
        BUILDERS[kind](tmp, seed)
        (tmp / "ldmprobe-demo.json").write_text(
            json.dumps(
                {"kind": kind, "seed": seed, "weights": "random", VERSION_KEY: package_version()},
                indent=2,
            )
        )
