"""The disk-space preflight: its layer arithmetic, its estimate against real files, its stop."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ldmprobe import preflight
from ldmprobe.backbones.stable_diffusion import StableDiffusion, attention_layers
from ldmprobe.core.config import validate_config
from ldmprobe.preflight import (
    DiskSpaceError,
    disk_preflight,
    image_footprint,
    unet_calls,
)

REPO = Path(__file__).resolve().parents[1]
SD = StableDiffusion()

# diffusers' defaults are the SD v1.x U-Net; only the text width differs.
SD1 = {"cross_attention_dim": 768}
DEEPER = {
    "block_out_channels": [32, 64, 64, 64],
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "layers_per_block": [1, 2, 2, 1],
    "transformer_layers_per_block": [1, 2, 1, 3],
}


def meta_unet(overrides: dict):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**overrides)


def discovered(unet, latent_h, latent_w):
    from ldmprobe.backbones.layers import discover_layers

    return discover_layers(SD, unet, latent_h, latent_w)


@pytest.fixture(scope="module")
def demo_unet_config(demo_models) -> dict:
    return json.loads((demo_models / "stable-diffusion" / "unet" / "config.json").read_text())


def test_layers_from_config_match_the_model_demo(demo_models, demo_unet_config):
    from ldmprobe.models import ModelRef, load_denoiser_on_meta

    unet = load_denoiser_on_meta(ModelRef("m", str(demo_models / "stable-diffusion")))
    for latent in [(8, 8), (16, 24)]:
        assert attention_layers(demo_unet_config, *latent) == discovered(unet, *latent)


@pytest.mark.parametrize(
    ("overrides", "count"), [(SD1, 16), (DEEPER, 21)], ids=["sd1", "deeper-transformers"]
)
def test_layers_from_config_match_the_model(overrides, count):
    unet = meta_unet(overrides)
    layers = attention_layers(dict(unet.config), 16, 8)
    assert layers == discovered(unet, 16, 8)
    assert len(layers) == count


def test_sd1_activation_bytes_match_the_reference_figures():
    """REFERENCE.md: 11,550,720 values per step per half at 512 px; 346.5 MB over 15 steps."""
    unet_config = dict(meta_unet(SD1).config)
    layers = attention_layers(unet_config, 64, 64)
    assert sum(layer.height * layer.width * layer.channels for layer in layers) == 11_550_720
    generation = {"height": 512, "width": 512, "scheduler": "lms", "steps": 15}
    estimate = StableDiffusion().estimate(unet_config, 512, 512)
    one_half = image_footprint(estimate, {**generation, "cfg_half": "cond", "previews": ["x0"]})
    assert one_half.activations == 346_521_600
    both = image_footprint(estimate, {**generation, "cfg_half": "both", "previews": ["x0"]})
    assert both.activations == 2 * one_half.activations


@pytest.mark.parametrize("scheduler", ["lms", "ddim", "pndm", "euler", "dpmpp"])
def test_unet_calls_match_the_schedulers(demo_models, scheduler):
    from ldmprobe.generation.generate import count_unet_calls
    from ldmprobe.models import ModelRef, load_scheduler_config, make_scheduler

    base = load_scheduler_config(ModelRef("m", str(demo_models / "stable-diffusion")))
    for steps in (4, 15):
        calls, _ = count_unet_calls(make_scheduler(scheduler, base), steps)
        assert unet_calls(scheduler, steps) == calls


def file_bytes(root: Path, exclude: str = "") -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != exclude)


def test_estimate_against_a_generated_store_and_label(demo_pipe, demo_models, tmp_path):
    """With codec none the chunk files hold exactly the estimated bytes; PNGs and labels less."""
    from ldmprobe.core.tasks import TASKS
    from ldmprobe.generation.generate import GenerationSettings, generate
    from ldmprobe.labels import build_labeler, label_image
    from ldmprobe.models import ModelRef

    generation = {
        "height": 64,
        "width": 64,
        "scheduler": "lms",
        "steps": 4,
        "cfg_half": "both",
        "previews": ["x0", "xt"],
    }
    settings = GenerationSettings(
        height=64,
        width=64,
        steps=4,
        halves=("uncond", "cond"),
        preview_kinds=("x0", "xt"),
        codec={"name": "none"},
    )
    paths = [tmp_path / name for name in ("image.png", "previews", "act.zarr", "meta.json")]
    generate(demo_pipe, "a red car", 7, settings, *paths, {"model": "demo"})
    footprint = image_footprint(
        StableDiffusion().estimate(demo_pipe.unet.config, 64, 64), generation
    )

    store = tmp_path / "act.zarr"
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert sum(p.stat().st_size for p in chunks) == footprint.activations + footprint.latents
    latents = file_bytes(store / "latents", exclude="zarr.json")
    assert latents == footprint.latents
    pictures = file_bytes(tmp_path / "previews") + (tmp_path / "image.png").stat().st_size
    assert 0 < pictures <= footprint.pictures

    labeler = build_labeler("dpt", ModelRef("m", str(demo_models / "dpt-depth")), "cpu", False, {})
    previews = sorted((tmp_path / "previews" / "x0").glob("step*.png"))
    label = tmp_path / "label.npz"
    label_image(labeler, TASKS["depth"], {}, tmp_path / "image.png", previews, label, {})
    assert 0.95 * footprint.labels_per_task < label.stat().st_size <= footprint.labels_per_task


@pytest.mark.parametrize("quantise", ["none", "int8-token", "int8-channel"])
def test_estimate_of_what_the_store_setting_keeps(demo_pipe, demo_models, tmp_path, quantise):
    """generation.store: read with a partial grid, the controls and an 8-bit codec: the
    estimate is the chunk bytes generate writes (codec name none), and the demo config's
    estimate is what the probe grid and the controls read, far below every step."""
    from ldmprobe.generation.generate import GenerationSettings, generate
    from ldmprobe.generation.reads import store_plan
    from ldmprobe.jobs import control_settings

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["generation"].update(
        height=64, width=64, steps=4, codec={"name": "none", "quantise": quantise}
    )
    config["probe"].update(layers=["down*", "mid.0"], steps=[1, 3])
    config["controls"]["permuted_unet"].update(layers=["up3.2"], steps=[0])
    config["controls"]["vae"]["steps"] = [2]
    config["models"]["diffusion"] = {"id": str(demo_models / "stable-diffusion")}
    config = validate_config(config)
    estimate = preflight.study_estimate(config)
    assert preflight.vae_channels(config) == demo_pipe.vae.config.block_out_channels[-1]
    arrays = preflight.stored_arrays(config, estimate, 4, preflight.vae_channels(config))
    footprint = image_footprint(estimate, config["generation"], arrays)
    everything = image_footprint(estimate, {**config["generation"], "codec": {}})
    assert footprint.activations < everything.activations / 3

    plan = {source: selection.to_dict() for source, selection in store_plan(config).items()}
    settings = GenerationSettings(
        height=64,
        width=64,
        steps=4,
        preview_kinds=("x0",),
        codec=config["generation"]["codec"],
        store=plan,
        **control_settings(config["controls"]),
    )
    paths = [tmp_path / name for name in ("image.png", "previews", "act.zarr", "meta.json")]
    generate(demo_pipe, "a red car", 7, settings, *paths, {"model": "demo"})
    store = tmp_path / "act.zarr"
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert sum(p.stat().st_size for p in chunks) == footprint.activations + footprint.latents


@pytest.fixture
def study(demo_models, tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["models"]["diffusion"] = {"id": str(demo_models / "stable-diffusion")}
    config["generation"].update(height=64, width=64)
    config = validate_config(config)
    stores = [str(tmp_path / f"results/generation/p{i}/1/activations.zarr") for i in range(3)]
    labels = [str(tmp_path / f"results/labels/depth/p{i}/1.npz") for i in range(3)]
    unet_config = json.loads((demo_models / "stable-diffusion/unet/config.json").read_text())
    generation = config["generation"]
    estimate = StableDiffusion().estimate(unet_config, 64, 64)
    calls = unet_calls(generation["scheduler"], generation["steps"])
    arrays = preflight.stored_arrays(config, estimate, calls, preflight.vae_channels(config))
    footprint = image_footprint(estimate, generation, arrays)
    return config, stores, labels, footprint


def fake_disk(monkeypatch, free: int) -> list:
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return SimpleNamespace(total=10 * free + 1, used=9 * free, free=free)

    monkeypatch.setattr(preflight.shutil, "disk_usage", disk_usage)
    return asked


def test_too_little_free_space_stops_with_what_to_do(study, monkeypatch, tmp_path):
    config, stores, labels, footprint = study
    needed = 3 * footprint.generation + 3 * footprint.labels_per_task
    asked = fake_disk(monkeypatch, free=int(needed * 1.1))  # enough without the factor 1.2
    with pytest.raises(DiskSpaceError) as caught:
        disk_preflight(config, stores, labels)
    message = str(caught.value)
    assert asked == [tmp_path]  # results/ does not exist yet: its nearest existing parent
    assert f"'{config['results']}'" in message
    assert preflight.human(needed) in message and "3 images" in message
    assert "'preflight.check_free_space': false" in message


def test_enough_free_space_passes_and_says_what_it_checked(study, monkeypatch):
    config, stores, labels, footprint = study
    needed = 3 * footprint.generation + 3 * footprint.labels_per_task
    fake_disk(monkeypatch, free=int(needed * 1.3))
    line = disk_preflight(config, stores, labels)
    assert line.startswith("free space: this run writes about " + preflight.human(needed))


def test_only_outputs_not_written_yet_count(study, monkeypatch):
    config, stores, labels, footprint = study
    for path in [*stores[:2], *labels]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    fake_disk(monkeypatch, free=int(1.2 * footprint.generation) + 1)
    line = disk_preflight(config, stores, labels)
    assert "1 images" in line and "0 label files" in line
    fake_disk(monkeypatch, free=int(1.2 * footprint.generation) - 1)
    with pytest.raises(DiskSpaceError, match="1 images"):
        disk_preflight(config, stores, labels)


def test_check_can_be_switched_off(study, monkeypatch):
    config, stores, labels, _ = study
    fake_disk(monkeypatch, free=0)
    config["preflight"]["check_free_space"] = False
    assert "not checked" in disk_preflight(config, stores, labels)


def test_unbuilt_model_is_reported_as_not_checked(study, monkeypatch, tmp_path):
    config, stores, labels, _ = study
    fake_disk(monkeypatch, free=0)
    config["models"]["diffusion"]["id"] = str(tmp_path / "not-built-yet")
    line = disk_preflight(config, stores, labels)
    assert line.startswith("free space: not checked") and "models.diffusion" in line


@pytest.mark.parametrize(
    ("path", "directory", "inside"),
    [
        ("resources/demo-models/vgg16", "resources/demo-models", True),
        ("resources/demo-models", "resources/demo-models", False),
        ("/tmp/demo/models/vgg16", "/tmp/demo/models", True),
        # A hub id beside an absolute demo_dir (bench/bench_dag.py's reference config).
        ("timm/vgg16.tv_in1k", "/tmp/demo/models", False),
        ("/tmp/demo/models/vgg16", "resources/demo-models", False),
    ],
)
def test_is_inside_compares_relative_and_absolute_paths(path, directory, inside):
    from ldmprobe.models import is_inside

    assert is_inside(path, directory) is inside
