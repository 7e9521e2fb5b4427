"""The model families behind the backbone seam (SDXL, PixArt, SD3, Flux): layer names as a
contract (full-size architectures on the meta device), and each family's tiny random model
generating through the adapter's real loading code (``ldmprobe.models.demo_models``, saved and
loaded back offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from ldmprobe.backbones import BACKBONES, backbone_of, get_backbone
from ldmprobe.backbones.layers import discover_layers, select_layers
from ldmprobe.core.config import ConfigError
from ldmprobe.generation.generate import GenerationSettings, generate
from ldmprobe.models import ModelRef, load_denoiser_on_meta, load_diffusion_pipeline
from ldmprobe.preflight import check_consistency, image_footprint

REPO = Path(__file__).resolve().parents[1]
# Key fields of the hub's config.json of each family's reference model ("source").
FULL_SIZE = json.loads((REPO / "tests/data/full_size_configs.json").read_text())

# family: (layer count, names in execution order as a pattern, first names, last name)
CONTRACT = {
    "stable-diffusion-xl": (70, r"(down[12]|mid|up[01])\.\d\.t\d", "down1.0.t0", "up1.2.t1"),
    "pixart": (28, r"block\d\d", "block00", "block27"),
    "stable-diffusion-3": (24, r"block\d\d", "block00", "block23"),
    "flux": (57, r"(double|single)\d\d", "double00", "single37"),
}


def full_size(family: str):
    from ldmprobe.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import diffusers

    config = {k: v for k, v in FULL_SIZE[family].items() if k != "source"}
    model_class = getattr(diffusers, config.pop("_class_name"))
    with torch.device("meta"):
        return model_class.from_config(config), config


@pytest.fixture(scope="module", params=sorted(CONTRACT))
def full_size_layers(request):
    family = request.param
    denoiser, config = full_size(family)
    backbone = get_backbone(family)
    _channels, latent_h, latent_w = backbone.latent_shape(denoiser, 1024, 1024)
    return family, config, discover_layers(backbone, denoiser, latent_h, latent_w)


def test_layer_names_are_the_contract_at_full_size(full_size_layers):
    family, _config, layers = full_size_layers
    count, pattern, first, last = CONTRACT[family]
    names = [layer.name for layer in layers]
    assert len(names) == count == len(set(names))
    assert names[0] == first and names[-1] == last
    assert all(re.fullmatch(pattern, name) for name in names), names
    # Sorting names keeps execution order inside each block (two-digit indices, .t<i>).
    for block in {layer.block for layer in layers}:
        inside = [layer.name for layer in layers if layer.block == block]
        assert inside == sorted(inside), block
    assert "unet" not in " ".join(names)
    if family != "stable-diffusion-xl":
        # A transformer: every block on one token grid, 64x64 at 1024 px (2x2 patches).
        assert {(layer.height, layer.width) for layer in layers} == {(64, 64)}


def test_config_only_estimate_matches_the_discovered_layers(full_size_layers):
    family, config, layers = full_size_layers
    estimate = get_backbone(family).estimate(config, 1024, 1024)
    assert estimate.layers == [(layer.height * layer.width, layer.channels) for layer in layers]
    # The named table is discovery's, field for field: names, module paths, blocks, indices
    # within the block, execution order, token grids and channels.
    assert estimate.table == layers


def test_sdxl_selection_by_block_attention_and_transformer_index():
    denoiser, _config = full_size("stable-diffusion-xl")
    layers = discover_layers(get_backbone("stable-diffusion-xl"), denoiser, 32, 32)
    names = lambda patterns: [layer.name for layer in select_layers(layers, patterns)]  # noqa: E731
    assert len(names(["down2.*"])) == 20 and len(names(["mid_block"])) == 10
    assert names(["up1.2.*"]) == ["up1.2.t0", "up1.2.t1"]
    assert len(names(["*.t0"])) == 2 * 2 + 1 + 2 * 3  # one per transformer stack
    assert names(["down2.1.t7"]) == ["down2.1.t7"]
    assert [layer.height for layer in select_layers(layers, ["down1.0.t0", "mid.0.t0"])] == [
        16,
        8,
    ]


# Tiny models of each family, built by the workflow's builders --------------------------------

TINY = {  # builder: (backbone, scheduler, halves)
    "stable-diffusion-xl": ("stable-diffusion-xl", "euler", ("uncond", "cond")),
    "pixart-sigma": ("pixart", "dpmpp", ("uncond", "cond")),
    "pixart-alpha": ("pixart", "dpmpp", ("cond",)),
    "stable-diffusion-3": ("stable-diffusion-3", "flow-euler", ("uncond", "cond")),
    "flux": ("flux", "flow-euler", ("cond",)),
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    from ldmprobe.models.demo_models import build_demo_model

    root = tmp_path_factory.mktemp("family-models")
    for kind in TINY:
        build_demo_model(kind, root / kind, seed=0)
    return root


@pytest.fixture(scope="module")
def generations(family_models, tmp_path_factory):
    """Each family's tiny image, generated once on first use: kind -> outputs."""
    done = {}

    def generated(kind: str):
        if kind not in done:
            done[kind] = generate_tiny(kind, family_models, tmp_path_factory.mktemp(kind))
        return done[kind]

    return generated


def generate_tiny(kind: str, family_models: Path, out: Path):
    backbone, scheduler, halves = TINY[kind]
    pipe = load_diffusion_pipeline(
        ModelRef("models.diffusion", str(family_models / kind)),
        scheduler,
        "float32",
        "cpu",
        backbone=backbone,
    )
    settings = GenerationSettings(
        height=64,
        width=64,
        steps=3,
        guidance_scale=4.0,
        halves=halves,
        preview_kinds=("x0", "xt"),
        codec={"name": "none"},
        permuted_layers=("*",),
        vae_latent="x0",
    )
    paths = [out / name for name in ("image.png", "previews", "a.zarr", "meta.json")]
    meta = generate(pipe, "a red car on a street", 7, settings, *paths, {"model": kind})
    group = zarr.open_group(str(out / "a.zarr"), mode="r")
    return kind, pipe, settings, meta, group, out


@pytest.fixture(params=sorted(TINY))
def generated(request, generations):
    return generations(request.param)


def test_the_adapter_of_each_loaded_pipeline_is_its_family(generated, family_models):
    kind, pipe, _settings, meta, _group, _out = generated
    backbone = backbone_of(pipe)
    assert backbone.name == TINY[kind][0]
    # The layer table of a layer_table job (meta device, from the saved config) is generation's.
    ref = ModelRef("models.diffusion", str(family_models / kind))
    denoiser = load_denoiser_on_meta(ref, backbone=backbone.name)
    layers = discover_layers(backbone, denoiser, 8, 8)
    assert [layer.to_dict() for layer in layers] == meta["layers"]
    assert meta["prompt_tokens"] > 5 and meta["prompt_truncated"] is False


def test_store_holds_every_layer_half_and_control_at_the_estimated_bytes(generated):
    """Codec none: the chunk files hold exactly the bytes the config-only estimate predicts."""
    kind, pipe, settings, meta, group, out = generated
    backbone = backbone_of(pipe)
    kind_name = backbone.kind
    names = [layer["name"] for layer in meta["layers"]]
    for half in settings.halves:
        assert sorted(group[f"{kind_name}/{half}"].array_keys()) == sorted(names)
        assert sorted(group[f"{kind_name}-permuted/{half}"].array_keys()) == sorted(names)
    first = meta["layers"][0]
    array = group[f"{kind_name}/cond/{first['name']}"]
    assert array.shape == (3, first["height"] * first["width"], first["channels"])
    assert group["vae/guided/decoder.mid.0"].shape[0] == 3
    assert group["latents/xt"].shape == (3, *backbone.latent_shape(backbone.denoiser(pipe), 64, 64))
    real = np.asarray(array[:])
    permuted = np.asarray(group[f"{kind_name}-permuted/cond/{first['name']}"][:])
    assert np.isfinite(real).all() and not np.array_equal(real, permuted)

    config = dict(backbone.denoiser(pipe).config)
    generation = {
        "height": 64,
        "width": 64,
        "scheduler": "euler",
        "steps": 3,
        "cfg_half": "both" if len(settings.halves) == 2 else "cond",
        "previews": ["x0", "xt"],
    }
    footprint = image_footprint(backbone.estimate(config, 64, 64), generation)
    controls = sum(
        p.stat().st_size
        for source in (f"{kind_name}-permuted", "vae")
        for p in (out / "a.zarr" / source).rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunks = sum(
        p.stat().st_size
        for p in (out / "a.zarr").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    assert chunks - controls == footprint.activations + footprint.latents


@pytest.mark.parametrize("kind", [k for k, (_b, _s, halves) in TINY.items() if len(halves) == 2])
def test_cfg_halves_differ_where_the_family_has_a_cfg_batch(generations, kind):
    _kind, pipe, _settings, meta, group, _out = generations(kind)
    backbone = backbone_of(pipe)
    assert sorted(group[backbone.kind].group_keys()) == ["cond", "uncond"]
    layer = meta["layers"][-1]["name"]
    uncond = np.asarray(group[f"{backbone.kind}/uncond/{layer}"][:])
    cond = np.asarray(group[f"{backbone.kind}/cond/{layer}"][:])
    assert not np.array_equal(uncond, cond)


@pytest.mark.parametrize("kind", ["stable-diffusion-3", "flux"])
def test_flow_matching_x0_is_the_schedulers_next_step(generations, kind):
    """x_{k+1} = x_k + (sigma_{k+1} - sigma_k) v_k, with v_k = (x_k - x0_k) / sigma_k: the x0
    of each call is what the scheduler steps to; the last one is the image's latent. (The
    noise-predicting families' x0 is SD's, tested with its schedulers in test_models.py.)"""
    _kind, pipe, _settings, _meta, group, out = generations(kind)
    assert backbone_of(pipe).flow_matching
    xt, x0 = np.asarray(group["latents/xt"][:]), np.asarray(group["latents/x0"][:])
    sigmas = pipe.scheduler.sigmas.numpy()
    for k in range(len(xt) - 1):
        velocity = (xt[k] - x0[k]) / sigmas[k]
        np.testing.assert_allclose(
            xt[k + 1], xt[k] + (sigmas[k + 1] - sigmas[k]) * velocity, rtol=1e-4, atol=1e-4
        )
    last = np.asarray(Image.open(out / "previews/x0/step002.png"), dtype=float)
    image = np.asarray(Image.open(out / "image.png"), dtype=float)
    assert np.abs(last - image).max() <= 1  # the pipeline's own decode of its final latent


def test_flux_has_no_unconditional_half(family_models, tmp_path):
    pipe = load_diffusion_pipeline(
        ModelRef("models.diffusion", str(family_models / "flux")),
        "flow-euler",
        "float32",
        "cpu",
        backbone="flux",
    )
    settings = GenerationSettings(height=64, width=64, steps=1, halves=("uncond", "cond"))
    paths = [tmp_path / name for name in ("image.png", "previews", "a.zarr", "meta.json")]
    with pytest.raises(ValueError, match="uncond.*flux is guidance-distilled"):
        generate(pipe, "a lemon", 1, settings, *paths, {})


def config_for(backbone: str, **generation) -> dict:
    import yaml

    from ldmprobe.core.config import validate_config

    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["models"]["diffusion"]["backbone"] = backbone
    config["generation"].update(generation)
    return validate_config(config)


def test_config_checks_name_the_key_for_each_family():
    with pytest.raises(
        ConfigError, match=r"generation.cfg_half.*flux is guidance-distilled.*\['cond'\]"
    ):
        check_consistency(config_for("flux", scheduler="flow-euler", cfg_half="both"))
    with pytest.raises(ConfigError, match=r"generation.scheduler.*allowed: \['flow-euler'\]"):
        check_consistency(config_for("stable-diffusion-3", scheduler="lms"))
    with pytest.raises(ConfigError, match="generation.scheduler"):
        check_consistency(config_for("pixart", scheduler="flow-euler"))
    check_consistency(config_for("flux", scheduler="flow-euler"))


@pytest.mark.parametrize("name", ["sdxl", "pixart", "sd3", "flux"])
def test_reference_config_of_each_family_is_valid(name):
    from ldmprobe.core.config import load_config

    config = load_config(REPO / "config" / f"{name}.yaml")
    check_consistency(config)
    assert config["models"]["diffusion"]["backbone"] in BACKBONES


@pytest.mark.parametrize("kind", ["stable-diffusion", *sorted(TINY)])
def test_layer_discovery_calls_a_half_precision_denoiser_with_its_own_dtype(
    kind, family_models, tmp_path
):
    # Generation discovers the layers with a call of the loaded denoiser; on a GPU the study
    # loads it in float16, which refuses float32 inputs (bench_dump --full-size on an H200
    # stopped there). bfloat16 runs on the CPU.
    import torch

    from ldmprobe.models.demo_models import build_demo_model

    folder = family_models / kind
    if kind == "stable-diffusion":
        folder = tmp_path / kind
        build_demo_model(kind, folder, seed=0)
    backbone = TINY[kind][0] if kind in TINY else "stable-diffusion"
    ref = ModelRef("models.diffusion", str(folder))
    pipe = load_diffusion_pipeline(ref, "euler", "float32", "cpu", backbone=backbone)
    adapter = backbone_of(pipe)
    denoiser = adapter.denoiser(pipe)
    full = [layer.to_dict() for layer in discover_layers(adapter, denoiser, 8, 8)]
    half = discover_layers(adapter, denoiser.to(torch.bfloat16), 8, 8)
    assert [layer.to_dict() for layer in half] == full
