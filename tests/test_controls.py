"""The controls (permuted U-Net, VAE decoder attention, latent x_t) against recomputation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from ldmprobe import jobs
from ldmprobe.generation import sources
from ldmprobe.generation.generate import permute_weights
from ldmprobe.generation.sources import GUIDED, named
from ldmprobe.models import ModelRef, load_diffusion_pipeline
from ldmprobe.reporting.aggregate import summarise_metrics

PERMUTED = sources.PERMUTED.name("unet")
VAE, VAE_LAYER = sources.VAE.name(), sources.VAE.layer["name"]
LATENT, LATENT_LAYER = sources.LATENT.name(), sources.LATENT.layer["name"]

SEED = 5
PROMPT = "a lemon on a table"


def fresh_pipe(demo_models):
    # Never the session's demo_pipe: the permuted control changes the U-Net in place.
    ref = ModelRef("models.diffusion", str(demo_models / "stable-diffusion"))
    return load_diffusion_pipeline(ref, "lms", "float32", "cpu")


def test_permutation_keeps_values_and_biases_and_follows_the_seed():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Conv2d(2, 3, 3)
    )
    original = {k: v.clone() for k, v in module.state_dict().items()}
    assert permute_weights(module, seed=1) == 3
    for name, value in module.state_dict().items():
        if name.endswith("bias"):
            assert torch.equal(value, original[name])
        else:
            assert torch.equal(
                value.flatten().sort().values, original[name].flatten().sort().values
            )
    assert not torch.equal(module[0].weight, original["0.weight"])
    again = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Conv2d(2, 3, 3)
    )
    again.load_state_dict(original)
    permute_weights(again, seed=1)
    assert all(
        torch.equal(a, b) for a, b in zip(again.parameters(), module.parameters(), strict=True)
    )
    again.load_state_dict(original)
    permute_weights(again, seed=2)
    assert not torch.equal(again[0].weight, module[0].weight)


GENERATION = {
    "scheduler": "lms",
    "steps": 3,
    "guidance_scale": 7.5,
    "height": 64,
    "width": 64,
    "dtype": "float32",
    "device": "cpu",
    "cfg_half": "cond",
    "previews": ["x0"],
    "codec": {"name": "zstd", "level": 1},
    "start": {"kind": "noise"},
}
CONTROLS = {
    "permuted_unet": {"enabled": True, "seed": 3, "layers": ["up3.2", "mid.0"]},
    "vae": {"enabled": True, "latent": "x0"},
}


def generation_job(demo_models, images: list[tuple[str, int, object]]) -> None:
    """The generate job with every control on: (prompt, seed, output folder) per image."""
    jobs.generate(
        model={"id": str(demo_models / "stable-diffusion"), "backbone": "stable-diffusion"},
        allow_download=False,
        generation=GENERATION,
        images=[
            {
                "prompt": prompt,
                "seed": seed,
                "image": str(out / "image.png"),
                "previews": str(out / "previews"),
                "store": str(out / "activations.zarr"),
                "meta": str(out / "meta.json"),
            }
            for prompt, seed, out in images
        ],
        controls=CONTROLS,
        prompt_encoding="iso-8859-1",
    )


@pytest.fixture(scope="module")
def controlled(demo_models, tmp_path_factory):
    """One 64 px, 3-step generation with every control on, through the job function."""
    out = tmp_path_factory.mktemp("controls")
    generation_job(demo_models, [(PROMPT, SEED, out)])
    group = zarr.open_group(str(out / "activations.zarr"), mode="r")
    return out, group, json.loads((out / "meta.json").read_text())


def test_a_job_of_two_images_writes_what_a_job_each_writes(controlled, demo_models, tmp_path):
    """One pipeline for a batch: the image generated second (after another one, its permuted
    replay and VAE capture) is byte for byte the single-image job's, store, previews, meta."""
    single, _group, _meta = controlled
    first, second = tmp_path / "first", tmp_path / "second"
    generation_job(demo_models, [("a boat on a lake", 11, first), (PROMPT, SEED, second)])
    files = sorted(path.relative_to(single) for path in single.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
    assert any(PERMUTED in path.parts for path in files)
    assert any(VAE in path.parts for path in files)
    for path in files:
        assert (single / path).read_bytes() == (second / path).read_bytes(), path
    assert (first / "image.png").read_bytes() != (second / "image.png").read_bytes()


def test_meta_records_controls_and_prompt_encoding(controlled):
    _out, group, meta = controlled
    assert meta["prompt_encoding"] == "iso-8859-1"
    assert meta["controls"] == {
        "permuted_unet": {"seed": 3, "layers": ["mid.0", "up3.2"]},
        "vae_latent": "x0",
    }
    assert sorted(group[PERMUTED]["cond"].array_keys()) == ["mid.0", "up3.2"]
    assert named(VAE).grid(group, VAE, VAE_LAYER) == (8, 8)
    assert named(PERMUTED).grid(group, PERMUTED, "up3.2") == (8, 8)
    assert named(LATENT).grid(group, LATENT, LATENT_LAYER) == (8, 8)


def test_permuted_activations_are_a_permuted_unet_on_the_real_inputs(controlled, demo_models):
    _out, group, meta = controlled
    pipe = fresh_pipe(demo_models)
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True)
    embeddings = torch.cat([uncond, cond])
    permute_weights(pipe.unet, seed=3)
    captured = {}
    module = pipe.unet.up_blocks[3].attentions[2].transformer_blocks[0].attn1.to_out[0]
    module.register_forward_hook(lambda _m, _i, out: captured.setdefault("up3.2", out))
    real = np.asarray(group["unet/cond/up3.2"][:])
    for step, timestep in enumerate(meta["timesteps"]):
        captured.clear()
        # Both CFG rows of the U-Net input are the same latent; the store keeps the cond row.
        sample = torch.from_numpy(np.asarray(group["latents/xt"][step]))[None].repeat(2, 1, 1, 1)
        with torch.no_grad():
            pipe.unet(sample, torch.tensor(timestep), encoder_hidden_states=embeddings)
        expected = captured["up3.2"][1].numpy()
        stored = np.asarray(group[f"{PERMUTED}/cond/up3.2"][step]).astype(np.float32)
        np.testing.assert_allclose(stored, expected, atol=2e-3, rtol=1e-2)
        assert np.abs(stored - real[step]).mean() > 10 * np.abs(stored - expected).mean()


def test_vae_activations_come_from_decoding_each_steps_latent(controlled, demo_models):
    _out, group, _meta = controlled
    vae = fresh_pipe(demo_models).vae
    captured = []
    module = vae.decoder.mid_block.attentions[0].to_out[0]
    module.register_forward_hook(lambda _m, _i, out: captured.append(out[0].numpy()))
    x0 = np.asarray(group["latents/x0"][:])
    for step in range(x0.shape[0]):
        with torch.no_grad():
            vae.decode(torch.from_numpy(x0[step])[None] / vae.config.scaling_factor)
    stored = np.asarray(group[f"{VAE}/{GUIDED}/{VAE_LAYER}"][:]).astype(np.float32)
    assert stored.shape == (3, 64, vae.config.block_out_channels[-1])
    np.testing.assert_allclose(stored, np.stack(captured), atol=2e-3, rtol=1e-2)


def test_latent_tokens_are_the_unet_input_per_position(controlled):
    out, group, _meta = controlled
    tokens = named(LATENT).read(group, LATENT, GUIDED, LATENT_LAYER, 1, out / "activations.zarr")
    latent = np.asarray(group["latents/xt"][1])
    assert tokens.shape == (64, 4)
    assert np.array_equal(tokens[8 * 2 + 5], latent[:, 2, 5])  # token (row 2, col 5)
    assert named(LATENT).half_for("cond") == GUIDED
    assert named(PERMUTED).half_for("uncond") == "uncond"


def test_controls_off_write_only_the_unet(demo_models, tmp_path):
    pipe = fresh_pipe(demo_models)
    from ldmprobe.generation.generate import GenerationSettings, generate

    settings = GenerationSettings(height=64, width=64, steps=2, codec={"name": "none"})
    meta = generate(
        pipe,
        PROMPT,
        SEED,
        settings,
        tmp_path / "i.png",
        tmp_path / "p",
        tmp_path / "a.zarr",
        tmp_path / "m.json",
        {},
    )
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert sorted(group.group_keys()) == ["latents", "unet"]
    assert meta["controls"] == {"permuted_unet": None, "vae_latent": None}


def test_summary_rows_of_controls_and_labeler_carry_their_source():
    layers = [
        {"name": "up3.2", "block": "up_blocks.3", "order": 15},
        {"name": "mid.0", "block": "mid_block", "order": 6},
    ]
    rows = []
    for source, layer in [
        ("unet", "up3.2"),
        (PERMUTED, "up3.2"),
        (VAE, VAE_LAYER),
        (LATENT, LATENT_LAYER),
        ("position", "grid"),
        ("labeler", "preview"),
    ]:
        for image, value in enumerate([0.2, 0.4, 0.9]):
            rows.append(
                {
                    "prompt_id": f"p{image}",
                    "seed": 1,
                    "task": "saliency",
                    "metric": "dice",
                    "value": value,
                    "source": source,
                    "half": "",
                    "layer": layer,
                    "step": 4,
                }
            )
    summary = summarise_metrics(pd.DataFrame(rows), layers, "demo", 100, 0.95, 0)
    assert sorted(summary.source) == sorted(["unet", PERMUTED, VAE, LATENT, "position", "labeler"])
    by_source = summary.set_index("source")
    assert by_source.loc[PERMUTED, "block"] == "up_blocks.3"
    assert by_source.loc[VAE, "block"] == "vae.decoder.mid_block"
    assert np.allclose(summary["mean"], 0.5)


def test_position_tokens_are_a_cosine_basis_that_can_fit_any_map_of_a_small_grid(controlled):
    out, group, _meta = controlled
    position = sources.POSITION.name()
    tokens = named(position).read(group, position, GUIDED, "grid", 2, out / "activations.zarr")
    assert named(position).grid(group, position, "grid") == (8, 8)
    assert tokens.shape == (64, 64)  # 8 x 8 frequencies on the 8 x 8 latent grid
    # As good as a one-hot code here: a linear map of the tokens fits any map of position...
    target = np.random.default_rng(0).normal(size=64)
    weights, *_ = np.linalg.lstsq(tokens, target, rcond=None)
    np.testing.assert_allclose(tokens @ weights, target, atol=1e-8)
    # ...and it knows nothing of the image: the same tokens at every step and in every store.
    again = named(position).read(group, position, GUIDED, "grid", 0, out / "activations.zarr")
    assert np.array_equal(tokens, again) and named(position).half_for("cond") == GUIDED
    # On a larger grid only the first frequencies of each axis: smooth maps of position.
    large = sources.position_features(32, 16)
    assert large.shape == (512, 64) and np.linalg.matrix_rank(large) == 64
    row_of_token = np.repeat(np.arange(32), 16).astype(float)
    weights, *_ = np.linalg.lstsq(large, row_of_token, rcond=None)
    assert np.corrcoef(large @ weights, row_of_token)[0, 1] > 0.99  # depth-like: row of token
