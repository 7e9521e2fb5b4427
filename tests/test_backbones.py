"""The backbone seam: the registry, the Stable Diffusion adapter's contract, and the trace on a
real U-Net (record what a replay gives back; edit one CFG half at one layer and step)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ldmprobe.backbones import BACKBONES, backbone_of, get_backbone
from ldmprobe.backbones.layers import discover_layers
from ldmprobe.backbones.trace import Trace
from ldmprobe.core.config import ConfigError, validate_config
from ldmprobe.generation.generate import initial_noise
from ldmprobe.preflight import check_consistency

REPO = Path(__file__).resolve().parents[1]

# The layer names are the contract between stores, probes, figures and configs (paper Table 1).
SD1_NAMES = [
    "down0.0", "down0.1", "down1.0", "down1.1", "down2.0", "down2.1", "mid.0",
    "up1.0", "up1.1", "up1.2", "up2.0", "up2.1", "up2.2", "up3.0", "up3.1", "up3.2",
]  # fmt: skip


def test_registry_and_unknown_backbone_names_the_key():
    assert "stable-diffusion" in BACKBONES
    assert get_backbone("stable-diffusion").kind == "unet"
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["models"]["diffusion"]["backbone"] = "stable-difusion"
    with pytest.raises(ConfigError, match=r"'models.diffusion.backbone'.*allowed: \["):
        check_consistency(validate_config(config))


def test_sd_adapter_names_layers_and_its_estimate_matches_the_model(demo_pipe):
    backbone = backbone_of(demo_pipe)
    assert backbone.name == "stable-diffusion"
    layers = discover_layers(backbone, backbone.denoiser(demo_pipe), 16, 8)
    assert [layer.name for layer in layers] == SD1_NAMES
    estimate = backbone.estimate(dict(demo_pipe.unet.config), 128, 64)
    assert estimate.layers == [(layer.height * layer.width, layer.channels) for layer in layers]
    assert estimate.latent == backbone.latent_shape(demo_pipe.unet, 128, 64) == (4, 16, 8)
    assert backbone.cfg_layout(2) == {"uncond": 0, "cond": 1}
    assert backbone.cfg_layout(1) == {"cond": 0}


def calls_of_one_image(pipe, steps=2):
    """Every U-Net call of a 64 px image: the replay inputs and the up3.2 output of each."""
    backbone = backbone_of(pipe)
    layer = next(x for x in discover_layers(backbone, pipe.unet, 8, 8) if x.name == "up3.2")
    inputs, outputs = [], []
    with (
        Trace(
            pipe.unet,
            [backbone.point(layer.name, layer.module_path)],
            halves=("uncond", "cond"),
            layout=backbone.cfg_layout,
            record=lambda _layer, half, step, tokens: outputs.append((half, step, tokens.clone())),
            on_call=lambda _step, args, kwargs, _out: inputs.append(
                backbone.replay_inputs(args, kwargs)
            ),
        ) as trace,
        torch.no_grad(),
    ):
        image = pipe(
            "a red car", height=64, width=64, num_inference_steps=steps, guidance_scale=7.5,
            latents=initial_noise(7, (4, 8, 8)), output_type="np",
        ).images  # fmt: skip
    assert trace.calls == steps
    return backbone, layer, inputs, outputs, image


def test_replaying_recorded_inputs_gives_the_recorded_activations(demo_pipe):
    backbone, layer, inputs, outputs, _ = calls_of_one_image(demo_pipe)
    replayed = []
    point = backbone.point(layer.name, layer.module_path)
    with (
        Trace(demo_pipe.unet, [point], halves=("uncond", "cond"), layout=backbone.cfg_layout,
              record=lambda _l, half, step, tokens: replayed.append((half, step, tokens))),
        torch.no_grad(),
    ):  # fmt: skip
        for call in inputs:
            backbone.replay(demo_pipe.unet, call)
    assert [(h, s) for h, s, _ in replayed] == [(h, s) for h, s, _ in outputs]
    for (_, _, expected), (_, _, got) in zip(outputs, replayed, strict=True):
        assert torch.equal(expected, got)


def test_edit_of_the_cond_half_at_one_step_changes_only_what_follows(demo_pipe):
    """The intervention's mechanism: zero up3.2's conditional row at the last step only."""
    backbone, layer, _inputs, clean, clean_image = calls_of_one_image(demo_pipe)
    point = backbone.point(layer.name, layer.module_path)
    seen = []

    def zero_last_step(_layer, half, step, tokens):
        return torch.zeros_like(tokens) if step == 1 else None

    with (
        Trace(demo_pipe.unet, [point], halves=("cond",), layout=backbone.cfg_layout,
              edit=zero_last_step,
              record=lambda _l, half, step, tokens: seen.append((step, tokens.clone()))),
        torch.no_grad(),
    ):  # fmt: skip
        image = demo_pipe(
            "a red car", height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
            latents=initial_noise(7, (4, 8, 8)), output_type="np",
        ).images  # fmt: skip
    clean_cond = [tokens for half, _step, tokens in clean if half == "cond"]
    assert torch.equal(seen[0][1], clean_cond[0])  # step 0 untouched
    assert not seen[1][1].any()  # step 1's conditional row replaced (record sees the edit)
    assert not np.allclose(image, clean_image)  # and the image follows it
