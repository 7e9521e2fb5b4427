import json

import numpy as np
import pytest
import torch
import zarr

from ldmprobe.backbones.layers import discover_layers, select_layers
from ldmprobe.backbones.schedule import alpha_bar
from ldmprobe.backbones.stable_diffusion import StableDiffusion, layer_name
from ldmprobe.generation.generate import GenerationSettings, generate, initial_noise
from ldmprobe.models import ModelRef, load_denoiser_on_meta

SD = StableDiffusion()

# Paper Table 1 for SD v1.x at 512 px: (block, layers, token side) in execution order.
SD1_LAYOUT = [
    ("down_blocks.0", 2, 64),
    ("down_blocks.1", 2, 32),
    ("down_blocks.2", 2, 16),
    ("mid_block", 1, 8),
    ("up_blocks.1", 3, 16),
    ("up_blocks.2", 3, 32),
    ("up_blocks.3", 3, 64),
]


def test_layers_are_discovered_from_the_model_in_execution_order(demo_models):
    unet = load_denoiser_on_meta(ModelRef("m", str(demo_models / "stable-diffusion")))
    layers = discover_layers(SD, unet, 64, 64)
    expected = [(block, side) for block, count, side in SD1_LAYOUT for _ in range(count)]
    assert [(layer.block, layer.height) for layer in layers] == expected
    assert [layer.order for layer in layers] == list(range(16))
    assert layers[0].name == "down0.0" and layers[6].name == "mid.0" and layers[-1].name == "up3.2"
    assert all(layer.module_path.endswith("transformer_blocks.0.attn1") for layer in layers)


def test_layer_names_for_deeper_transformers():
    path = "up_blocks.1.attentions.2.transformer_blocks.3.attn1"
    assert layer_name(path) == ("up1.2.t3", "up_blocks.1")


def test_layer_selection_by_pattern_and_unknown_pattern(demo_models):
    unet = load_denoiser_on_meta(ModelRef("m", str(demo_models / "stable-diffusion")))
    layers = discover_layers(SD, unet, 64, 64)
    assert [layer.name for layer in select_layers(layers, ["up_blocks.3", "mid*"])] == [
        "mid.0",
        "up3.0",
        "up3.1",
        "up3.2",
    ]
    with pytest.raises(ValueError, match=r"\['nope\*'\] match no layer"):
        select_layers(layers, ["up3.*", "nope*"])


def test_initial_noise_is_the_reference_recipe():
    torch.manual_seed(30918977)
    reference = torch.randn((1, 4, 64, 64))
    assert torch.equal(initial_noise(30918977, (4, 64, 64)), reference)


def test_sigma_schedulers_use_their_sigma(demo_pipe):
    scheduler = demo_pipe.scheduler
    scheduler.set_timesteps(15)
    scheduler._step_index = 3
    sigma = float(scheduler.sigmas[3])
    assert alpha_bar(scheduler, scheduler.timesteps[3]) == pytest.approx(1 / (1 + sigma**2))


@pytest.fixture(scope="module")
def generated(demo_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    settings = GenerationSettings(
        height=64, width=64, halves=("uncond", "cond"), preview_kinds=("x0", "xt")
    )
    meta = generate(
        demo_pipe,
        "a red car",
        7,
        settings,
        out / "image.png",
        out / "previews",
        out / "act.zarr",
        out / "meta.json",
        {"model": "demo"},
    )
    return out, meta


def test_store_layout_and_meta(generated):
    out, meta = generated
    group = zarr.open_group(str(out / "act.zarr"), mode="r")
    assert meta["unet_calls"] == 15 and len(meta["timesteps"]) == 15
    assert len(meta["layers"]) == 16
    for layer in meta["layers"]:
        array = group[f"unet/cond/{layer['name']}"]
        assert array.shape == (15, layer["height"] * layer["width"], layer["channels"])
        assert array.chunks == (1, *array.shape[1:])
        assert array.dtype == np.float16
    assert group["latents/x0"].shape == (15, 4, 8, 8)
    assert sorted(p.name for p in (out / "previews" / "x0").iterdir())[-1] == "step014.png"
    assert json.loads((out / "meta.json").read_text())["seed"] == 7
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_cfg_halves_differ_and_cond_is_index_one(generated, demo_pipe):
    """Hook the same layer independently and compare with what the store holds."""
    out, meta = generated
    group = zarr.open_group(str(out / "act.zarr"), mode="r")
    # The first layers see no text yet (cross-attention follows attn1): use the last one.
    cond = np.asarray(group["unet/cond/up3.2"][0])
    uncond = np.asarray(group["unet/uncond/up3.2"][0])
    assert not np.allclose(cond, uncond, atol=1e-2)

    captured = []
    module = dict(demo_pipe.unet.named_modules())[meta["layers"][-1]["module_path"]].to_out[0]
    handle = module.register_forward_hook(lambda _m, _i, o: captured.append(o.detach().clone()))
    try:
        demo_pipe(
            "a red car",
            height=64,
            width=64,
            num_inference_steps=15,
            guidance_scale=7.5,
            latents=initial_noise(7, (4, 8, 8)),
        )
    finally:
        handle.remove()
    np.testing.assert_allclose(cond, captured[0][1].numpy(), atol=2e-3, rtol=1e-2)
    np.testing.assert_allclose(uncond, captured[0][0].numpy(), atol=2e-3, rtol=1e-2)


def test_generation_is_deterministic(demo_pipe, tmp_path, generated):
    out, _ = generated
    settings = GenerationSettings(
        height=64, width=64, halves=("uncond", "cond"), preview_kinds=("x0", "xt")
    )
    generate(
        demo_pipe,
        "a red car",
        7,
        settings,
        tmp_path / "image.png",
        tmp_path / "previews",
        tmp_path / "act.zarr",
        tmp_path / "meta.json",
        {"model": "demo"},
    )
    first = zarr.open_group(str(out / "act.zarr"), mode="r")
    second = zarr.open_group(str(tmp_path / "act.zarr"), mode="r")
    for name in ("unet/cond/up3.2", "unet/cond/mid.0", "latents/x0"):
        assert np.array_equal(np.asarray(first[name][:]), np.asarray(second[name][:]))
    assert (out / "image.png").read_bytes() == (tmp_path / "image.png").read_bytes()
