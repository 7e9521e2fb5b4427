"""The known-answer world's latent diffusion model: training (deterministic, resumable), its
rules (a short retrain), the pipeline folder loaded as SD is, and route (b)'s inverted start."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from workflow import run_snakemake, tiny_config

from ldmprobe import scenes
from ldmprobe.world import train

TINY = {
    "train_images": 16,
    "heldout_images": 2,
    "checkpoint_every": 2,
    "log_every": 1,
    "vae": {
        "steps": 4,
        "batch": 2,
        "crop": 16,
        "channels": [8, 16, 16],
        "object_weight": 3.0,
        "mid_attention": True,
    },
    "diffusion": {"steps": 4, "batch": 4, "channels": [16, 32, 32], "text_layers": 1},
}


def state(folder):
    from safetensors.torch import load_file

    return {
        f"{path.parent.name}/{key}": value
        for path in sorted(folder.rglob("*.safetensors"))
        for key, value in load_file(path).items()
    }


def assert_same_weights(a, b):
    left, right = state(a), state(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_recipe_names_unknown_keys():
    with pytest.raises(ValueError, match="'vae'"):
        train.Recipe.from_dict({"vae": {"stepz": 3}})
    with pytest.raises(ValueError, match="sizes"):
        train.Recipe.from_dict({"sizes": 3})
    assert train.Recipe.from_dict({"vae": {"channels": [8, 16]}}).vae.channels == (8, 16)


def test_object_weight_and_mid_attention_reach_the_vae():
    recipe = train.Recipe.from_dict(TINY)
    vae = train.build_vae(recipe)
    assert vae.config.mid_block_add_attention
    assert vae.decoder.mid_block.attentions[0] is not None
    plain = train.build_vae(
        train.Recipe.from_dict({**TINY, "vae": {**TINY["vae"], "mid_attention": False}})
    )
    assert plain.decoder.mid_block.attentions[0] is None


def test_every_caption_word_is_one_token_and_any_text_tokenizes():
    captions = [scenes.caption(scenes.sample_scene(scenes.scene_rng(0, i))) for i in range(50)]
    tokenizer = train.caption_tokenizer(captions)
    words = {w for c in captions for w in c.replace(",", " ").split()}
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    longest = max(captions, key=len)
    assert len(tokenizer(longest).input_ids) < 40 < len(longest)
    # Unseen text falls back to bytes, never to an unknown token.
    ids = tokenizer("a purple torus!").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    # (CLIP's decoding ends every word with a space, so compare without them.)
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "apurpletorus!"


def run_stages(recipe, root):
    vae, latents, pipe = root / "vae", root / "latents.npz", root / "pipe"
    train.train_vae(recipe, vae, root / "ck" / "vae.pt")
    train.encode_latents(recipe, vae, latents)
    record = train.train_diffusion(recipe, vae, latents, pipe, root / "ck" / "diffusion.pt")
    return pipe, record


class Interrupted(Exception):
    pass


def test_training_is_deterministic_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    recipe = train.Recipe.from_dict(TINY)
    first, record = run_stages(recipe, tmp_path / "a")
    again, _ = run_stages(recipe, tmp_path / "b")
    assert_same_weights(first, again)
    assert not list((tmp_path / "a" / "ck").iterdir())  # checkpoints go once a stage is done

    # Each stage is stopped once at its third step, after its step-2 checkpoint; the rerun
    # continues from the checkpoint and ends where the uninterrupted run did.
    step = train.Progress.step
    stopped = set()

    def stop_once(self, index, loss, lr):
        if index == 2 and self.name not in stopped:
            stopped.add(self.name)
            raise Interrupted(self.name)
        step(self, index, loss, lr)

    monkeypatch.setattr(train.Progress, "step", stop_once)
    root = tmp_path / "c"
    while True:
        try:
            resumed, _ = run_stages(recipe, root)
            break
        except Interrupted as stage:
            saved = torch.load(root / "ck" / f"{stage}.pt", weights_only=False)
            assert saved["step"] == 2
    assert stopped == {"vae", "diffusion"}
    assert_same_weights(first, resumed)

    # Another recipe's checkpoint is not resumed.
    checkpoint = train.Checkpoint(tmp_path / "x.pt", recipe.to_dict())
    checkpoint.save({"step": 2})
    assert checkpoint.load()["step"] == 2
    other = train.Recipe.from_dict({**TINY, "seed": 1})
    assert train.Checkpoint(tmp_path / "x.pt", other.to_dict()).load() is None
    assert 0.0 <= record["quality"]["sample_count_match"] <= 1.0
    assert record["recipe"]["diffusion"]["steps"] == 4


def test_short_retrain_through_the_rules_gives_a_pipeline_generation_loads(tmp_path):
    from ldmprobe import jobs

    weights = tmp_path / "world-weights"
    world = {"diffusion": TINY, "weights_dir": str(weights), "work_dir": str(tmp_path / "work")}
    config = tiny_config(tmp_path, world={**world, "threads": 1})
    run_snakemake(tmp_path, config, "world_weights")
    folder = weights / "diffusion"
    record = json.loads((folder / "RECIPE.json").read_text())
    assert record["recipe"]["vae"]["steps"] == 4 and record["data_seed"] == 0
    assert set(record["versions"]) >= {"torch", "diffusers", "transformers"}
    assert {"wall_s", "cpu_s"} <= set(record["training"]["diffusion"])
    quality = record["quality"]
    assert quality["inversion"]["images"] == 2 and "vae_heldout_psnr_db" in quality
    assert (folder / "samples.png").is_file()
    # fp16 safetensors, loaded back in float32 on the CPU by the study's loader.
    assert all(v.dtype == torch.float16 for v in state(folder).values())

    model = {"id": str(folder), "backbone": "stable-diffusion"}
    table = tmp_path / "layers.json"
    generation = {"scheduler": "ddim", "steps": 4, "height": 64, "width": 64}
    jobs.layer_table(model, False, generation, table)
    layers = json.loads(table.read_text())["layers"]
    # 4x VAE: 64 px -> 16x16 latents; SD's layout: no attention in the deepest block.
    assert [(x["name"], x["height"]) for x in layers] == [
        ("down0.0", 16),
        ("down1.0", 8),
        ("mid.0", 4),
        ("up1.0", 8),
        ("up1.1", 8),
        ("up2.0", 16),
        ("up2.1", 16),
    ]

    # Route (b): the run starts from the inverted render of scene 3 of data seed 1.
    from ldmprobe.generation.inversion import inverted_start
    from ldmprobe.models import ModelRef, load_diffusion_pipeline

    scene = scenes.sample_scene(scenes.scene_rng(1, 3))
    start = {"kind": "world-inversion", "data_seed": 1}
    image = {
        "prompt": scenes.caption(scene),
        "seed": 3,
        "image": tmp_path / "gen" / "image.png",
        "previews": tmp_path / "gen" / "previews",
        "store": tmp_path / "gen" / "store.zarr",
        "meta": tmp_path / "gen" / "meta.json",
    }
    settings = {
        **generation,
        "guidance_scale": 1.0,
        "dtype": "float32",
        "device": "cpu",
        "cfg_half": "cond",
        "previews": ["x0"],
        "codec": {"name": "zstd", "level": 3},
        "start": start,
    }
    jobs.generate(model, False, settings, [image])
    import zarr

    stored = zarr.open_group(str(image["store"]), mode="r")["latents/xt"][0]
    pipe = load_diffusion_pipeline(ModelRef("world", str(folder)), "ddim", "float32", "cpu")
    expected = inverted_start(pipe, image["prompt"], 3, start, 64, 4)
    np.testing.assert_allclose(stored, expected[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="not the caption of scene 4"):
        inverted_start(pipe, image["prompt"], 4, start, 64, 4)
