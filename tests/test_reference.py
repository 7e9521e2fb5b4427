"""The reference study's settings: prompt tables as published, the noise recipe end to end, step
indexing under PNDM, and the native-resolution loss giving the reference's training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ldmprobe.core.config import load_config
from ldmprobe.core.prompts import load_prompts
from ldmprobe.generation.generate import GenerationSettings, generate, initial_noise
from ldmprobe.models import ModelRef, load_diffusion_pipeline
from ldmprobe.probing.probes import ProbeSettings, train_probe

REPO = Path(__file__).resolve().parents[1]


def test_reference_config_loads_the_published_tables_as_the_reference_did():
    config = load_config(REPO / "config" / "config.yaml")
    spec = config["prompts"]
    for entry in spec["files"]:
        if not (REPO / entry["path"]).is_file():
            pytest.fail(f"shared data is missing: {entry['path']} (the reference prompt tables)")
    frame = load_prompts(spec, REPO)
    assert len(frame) == 617
    assert spec["encoding"] == "iso-8859-1"
    # Test stays the published test split; val is carved from the published train rows only.
    counts = frame.split.value_counts().to_dict()
    assert counts["test"] == 371 and counts["train"] + counts["val"] == 246
    assert 0 < counts["val"] < 0.2 * 246
    assert set(frame[frame.split == "test"].source) == {spec["files"][1]["path"]}
    utf8 = load_prompts({**spec, "encoding": "utf-8"}, REPO)
    assert (frame.prompt != utf8.prompt).sum() == 39
    row = frame[frame.prompt_id == "5091175"].iloc[0]  # a caption quoted with commas inside
    assert row.seed == 30918977 and row.prompt.startswith('"""36""')
    assert config["generation"] | {} == {
        **config["generation"],
        "scheduler": "lms",
        "steps": 15,
        "guidance_scale": 7.5,
        "height": 512,
        "width": 512,
        "dtype": "float16",
    }
    assert config["probe"]["defaults"] == {"epochs": 30, "batch_images": 4, "lr": 0.001, "seed": 0}


def run(demo_models, tmp_path, scheduler, steps):
    ref = ModelRef("models.diffusion", str(demo_models / "stable-diffusion"))
    pipe = load_diffusion_pipeline(ref, scheduler, "float32", "cpu")
    settings = GenerationSettings(height=64, width=64, steps=steps, codec={"name": "none"})
    meta = generate(
        pipe,
        "a lemon",
        30918977,
        settings,
        tmp_path / "image.png",
        tmp_path / "previews",
        tmp_path / "a.zarr",
        tmp_path / "meta.json",
        {},
    )
    return pipe, meta, zarr.open_group(str(tmp_path / "a.zarr"), mode="r")


def test_first_unet_input_is_the_reference_noise_times_the_initial_sigma(demo_models, tmp_path):
    pipe, _meta, group = run(demo_models, tmp_path, "lms", 2)
    sigma = float(pipe.scheduler.init_noise_sigma)
    first = float(pipe.scheduler.sigmas[0])
    assert sigma > 1  # LMS starts in sigma space
    # The U-Net sees the latent divided by sqrt(sigma^2 + 1) (LMS's scale_model_input).
    expected = initial_noise(30918977, (4, 8, 8))[0].numpy() * sigma / np.sqrt(first**2 + 1)
    np.testing.assert_allclose(group["latents/xt"][0], expected, rtol=1e-5, atol=1e-5)


def test_pndm_repeated_timestep_keeps_one_step_per_unet_call(demo_models, tmp_path):
    _pipe, meta, group = run(demo_models, tmp_path, "pndm", 3)
    timesteps = meta["timesteps"]
    assert meta["unet_calls"] == 4 == len(timesteps)  # 3 steps, 4 U-Net calls
    assert len(set(timesteps)) == 3  # one timestep repeats
    assert group["unet/cond/up3.2"].shape[0] == 4 and group["latents/xt"].shape[0] == 4
    # Every call wrote its own chunk: no two steps hold the same activations.
    values = np.asarray(group["unet/cond/up3.2"][:])
    assert all(not np.array_equal(values[i], values[i + 1]) for i in range(3))
    # PNDM's noise is unscaled: the first U-Net input is the recipe's draw itself.
    assert np.array_equal(group["latents/xt"][0], initial_noise(30918977, (4, 8, 8))[0].numpy())
    assert json.loads((tmp_path / "meta.json").read_text())["timesteps"] == timesteps


@pytest.mark.parametrize(("loss", "kind"), [("cross_entropy", "binary"), ("mse", "continuous")])
def test_native_resolution_training_equals_the_upsampled_reference(loss, kind):
    """Same seeds, same data: the native loss trains the same probe as the 8x-upsampled one."""
    generator = torch.Generator().manual_seed(0)
    h = w = 4
    x = torch.randn(10, h * w, 6, generator=generator)
    weights = torch.randn(6, generator=generator)
    fine = torch.nn.functional.interpolate(
        (x @ weights).reshape(10, 1, h, w), scale_factor=8, mode="bilinear"
    )[:, 0]
    labels = (fine > 0).float() if kind == "binary" else fine
    probes = {}
    for resolution in ("native", "label"):
        settings = ProbeSettings(epochs=4, lr=1e-2, loss=loss, loss_resolution=resolution)
        probes[resolution] = train_probe(
            kind, settings, x[:8], labels[:8], x[8:], labels[8:], h, w
        ).probe
    for native, label in zip(
        probes["native"].parameters(), probes["label"].parameters(), strict=True
    ):
        torch.testing.assert_close(native, label, atol=1e-4, rtol=1e-4)
