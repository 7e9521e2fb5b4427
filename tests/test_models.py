"""The model loading layer: hub ids from the Hugging Face cache, SD 2.x variants, x0 of each
prediction type."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ldmprobe import jobs
from ldmprobe.backbones.layers import discover_layers, select_layers
from ldmprobe.backbones.schedule import alpha_bar, predict_x0
from ldmprobe.backbones.stable_diffusion import StableDiffusion, attention_layers
from ldmprobe.labels import build_labeler, label_model_ref
from ldmprobe.models import (
    MissingModelError,
    ModelRef,
    load_diffusion_pipeline,
    looks_like_local_path,
    make_scheduler,
    resolve_model,
)
from ldmprobe.models.demo_models import build_demo_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"

SD = StableDiffusion()


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd2") / "stable-diffusion-2"
    build_demo_model("stable-diffusion-2", path, seed=0)
    return path


def test_sd2_style_model_loads_with_v_prediction_and_its_layers_at_768(sd2, tmp_path):
    pipe = load_diffusion_pipeline(ModelRef("models.diffusion", str(sd2)), "lms", "float16", "cpu")
    assert type(pipe.scheduler).__name__ == "LMSDiscreteScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # kept from the model
    assert pipe.unet.dtype == torch.float32  # half precision is a GPU setting
    assert pipe.unet.config.use_linear_projection and pipe.unet.config.upcast_attention

    layers = discover_layers(SD, pipe.unet, 96, 96)
    sides = [layer.height for layer in layers]
    assert sides == [96, 96, 48, 48, 24, 24, 12, 24, 24, 24, 48, 48, 48, 96, 96, 96]
    unet_config = json.loads((sd2 / "unet/config.json").read_text())
    assert layers == attention_layers(unet_config, 96, 96)
    assert [x.name for x in select_layers(layers, ["up_blocks.3"])] == ["up3.0", "up3.1", "up3.2"]

    # The workflow's layer table goes through the same loading code.
    out = tmp_path / "layers.json"
    generation = {"scheduler": "ddim", "steps": 15, "height": 768, "width": 768}
    jobs.layer_table({"id": str(sd2), "backbone": "stable-diffusion"}, False, generation, str(out))
    table = json.loads(out.read_text())
    assert table["unet_calls"] == 15 and len(table["layers"]) == 16
    assert table["layers"][0]["height"] == 96 and table["layers"][-1]["name"] == "up3.2"


@pytest.mark.parametrize("scheduler", ["lms", "euler", "ddim", "dpmpp"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_preview_matches_the_schedulers_own_x0(scheduler, prediction_type):
    from diffusers import DDPMScheduler

    base = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
        prediction_type=prediction_type,
    ).config
    sched = make_scheduler(scheduler, base)
    assert sched.config.prediction_type == prediction_type
    sched.set_timesteps(5)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, 4, 8, 8), generator=generator) * sched.init_noise_sigma
    for timestep in sched.timesteps[:3]:
        model_input = sched.scale_model_input(sample, timestep)
        output = torch.randn((1, 4, 8, 8), generator=generator)
        x0 = predict_x0(model_input, output, alpha_bar(sched, timestep), prediction_type)
        if scheduler == "dpmpp":
            # DPM++ keeps its x0 as its model output (ENVIRONMENT.md).
            sample = sched.step(output, timestep, sample).prev_sample
            expected = sched.model_outputs[-1]
        else:
            step = sched.step(output, timestep, sample)
            sample, expected = step.prev_sample, step.pred_original_sample
        torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-4)


def test_hub_ids_resolve_from_the_hugging_face_cache_offline(demo_models, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--Intel--dpt-large"
    shutil.copytree(demo_models / "dpt-depth", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)

    snapshot = repo / "snapshots" / COMMIT
    assert resolve_model(ModelRef("m", "Intel/dpt-large")) == snapshot
    assert resolve_model(ModelRef("m", "Intel/dpt-large", revision=COMMIT)) == snapshot
    section = {"labeler": "dpt", "model": {"id": "Intel/dpt-large"}}
    labeler = build_labeler("dpt", label_model_ref("depth", section), "cpu", False, {})
    image = Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8))
    assert labeler.predict([image]).shape == (1, 32, 48)
    assert labeler.info["path"] == str(snapshot)

    with pytest.raises(MissingModelError, match="`hf download Intel/dpt-large --revision v9`"):
        resolve_model(ModelRef("labels.tasks.depth.model", "Intel/dpt-large", revision="v9"))


@pytest.mark.parametrize(
    ("model_id", "local"),
    [
        ("CompVis/stable-diffusion-v1-4", False),
        ("gpt2", False),
        ("resources/demo-models/stable-diffusion", True),
        ("./weights", True),
        ("/models/sd", True),
        ("~/models/sd", True),
    ],
)
def test_hub_ids_and_folders(model_id, local):
    assert looks_like_local_path(model_id) is local
