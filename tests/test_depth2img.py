"""The depth2img condition (intervention.depth2img): moving the object by conditioning Stable
Diffusion 2 depth on the translated target, on its tiny random-weight architecture."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from PIL import Image

from ldmprobe.core.config import ConfigError, load_config, validate_config
from ldmprobe.intervention import jobs
from ldmprobe.intervention.plan import conditions
from ldmprobe.intervention.summary import summarise_edits
from ldmprobe.intervention.targets import (
    depth_condition,
    draw_offset,
    translated_label,
    trial_rng,
)

GENERATION = {"device": "cpu", "dtype": "float32", "steps": 2, "guidance_scale": 7.5}
IMAGE = {"prompt_id": "boat", "seed": 666, "prompt": "a boat on a lake"}


def demo_config():
    return load_config(REPO / "config" / "demo.yaml")


def test_depth2img_keys_default_off_with_the_sd2_depth_model():
    section = demo_config()["intervention"]["depth2img"]
    assert section["enabled"] is False
    assert section["model"] == {"id": "stabilityai/stable-diffusion-2-depth", "revision": None}
    assert section["strength"] == 0.8
    assert section["steps"] is None and section["guidance_scale"] is None
    assert section["scheduler"] is None


@pytest.mark.parametrize(
    "bad",
    [{"strength": 0}, {"strength": 1.5}, {"steps": 0}, {"scheduler": "flow-euler"}, {"x": 1}],
)
def test_depth2img_keys_are_validated(bad):
    config = copy.deepcopy(demo_config())
    config["intervention"]["depth2img"].update(bad)
    with pytest.raises(ConfigError, match="depth2img"):
        validate_config(config)


def test_depth2img_is_one_more_condition_when_enabled():
    section = copy.deepcopy(demo_config()["intervention"])
    section["controls"] = ["identity"]
    assert conditions(section, None, ["up3.2"]) == ["probe", "identity"]
    section["depth2img"]["enabled"] = True
    assert conditions(section, None, ["up3.2"]) == ["probe", "identity", "depth2img"]


def test_the_depth_condition_is_the_target_and_a_mask_is_near_on_far():
    depth = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_array_equal(depth_condition("continuous", depth), depth)
    assert depth_condition("continuous", depth).dtype == np.float32
    mask = np.zeros((3, 4), np.float32)
    mask[1, 1:3] = 1
    np.testing.assert_array_equal(depth_condition("binary", mask), mask)
    # A flat map has no layout (and the pipeline's min-max scaling of it divides by zero).
    assert depth_condition("binary", np.zeros((3, 4))) is None
    assert depth_condition("continuous", np.full((3, 4), 2.0)) is None


@pytest.fixture(scope="module")
def depth2img_study(tmp_path_factory):
    """The tiny SD 2 depth and the demo's DPT, an original image and its depth label."""
    from ldmprobe.models.demo_models import build_demo_model

    root = tmp_path_factory.mktemp("depth2img")
    build_demo_model("stable-diffusion-2-depth", root / "sd2-depth", seed=0)
    build_demo_model("dpt-depth", root / "dpt-depth", seed=0)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "image.png")
    label = np.add.outer(np.linspace(0, 1, 64), np.linspace(0, 2, 64)).astype(np.float32)
    np.savez(root / "label.npz", target=label)
    return root


def section(root, **depth2img):
    intervention = copy.deepcopy(demo_config()["intervention"])
    intervention.update(enabled=True, task="depth", trials=2)
    intervention["depth2img"].update(
        enabled=True, model={"id": str(root / "sd2-depth"), "revision": None}, strength=0.5
    )
    intervention["depth2img"].update(depth2img)
    return intervention


def run_depth2img(root, intervention, task, label, out):
    jobs.depth2img(
        intervention["depth2img"]["model"],
        False,
        GENERATION,
        intervention,
        task,
        IMAGE,
        str(root / "image.png"),
        str(label),
        str(out),
    )


def test_depth2img_writes_each_trial_like_an_edit_and_is_scored(depth2img_study, tmp_path):
    root = depth2img_study
    intervention = section(root)
    out = tmp_path / "depth2img/boat/666"
    run_depth2img(root, intervention, "depth", root / "label.npz", out)
    label = np.load(root / "label.npz")["target"]
    cost = json.loads((out / "cost.json").read_text())
    # strength 0.5 of 2 steps skips the first of PNDM's 3 timesteps (PLMS repeats one).
    assert [trial["denoiser_calls"] for trial in cost["trials"]] == [2, 2]
    for trial in (0, 1):
        folder = out / f"trial{trial}"
        assert Image.open(folder / "image.png").size == (64, 64)
        assert not (folder / "edits.csv").exists()
        # The probe edit's target of this trial: the same offset, the same translated label.
        offset = draw_offset(trial_rng(intervention["seed"], "boat", 666, trial), 64, 64)
        with np.load(folder / "target.npz") as data:
            assert data["offset"].tolist() == [offset.dy, offset.dx]
            np.testing.assert_array_equal(
                data["target"], translated_label("continuous", label, offset)
            )
    # The same seed and target give the same image; another target another image.
    again = tmp_path / "again"
    run_depth2img(root, intervention, "depth", root / "label.npz", again)
    first = np.asarray(Image.open(out / "trial0/image.png"))
    assert np.array_equal(first, np.asarray(Image.open(again / "trial0/image.png")))
    assert not np.array_equal(first, np.asarray(Image.open(out / "trial1/image.png")))

    task = {
        "labeler": "dpt",
        "model": {"id": str(root / "dpt-depth"), "revision": None},
        "options": {"normalise": "none"},
    }
    scores, maps = tmp_path / "scores.csv", tmp_path / "maps.npz"
    jobs.score(
        "depth",
        task,
        False,
        "cpu",
        intervention,
        "depth2img",
        IMAGE,
        str(root / "image.png"),
        str(root / "label.npz"),
        str(out),
        str(scores),
        str(maps),
    )
    table = pd.read_csv(scores)
    assert set(table.condition) == {"depth2img"} and set(table.trial) == {0, 1}
    values = table.set_index(["trial", "metric"])["value"]
    assert np.isfinite(values.loc[(0, "delta_spearman")])
    assert np.isnan(values.loc[(0, "relative_edit")])  # no activation was edited
    assert np.load(maps)["target"].shape[0] == 2
    # Beside the probe edit it is one more condition, with its paired difference.
    probe = table.assign(condition="probe")
    summary = summarise_edits(pd.concat([probe, table]), {"bootstrap_resamples": 50})
    assert {"probe", "depth2img"} <= set(summary.condition)
    assert "depth2img" in set(summary.minus)


def test_a_flat_target_has_nothing_to_condition_on_and_is_left_out(depth2img_study, tmp_path):
    root = depth2img_study
    np.savez(tmp_path / "empty.npz", target=np.zeros((64, 64), np.float32))
    intervention = section(root)
    intervention["task"] = "saliency"
    out = tmp_path / "depth2img"
    run_depth2img(root, intervention, "saliency", tmp_path / "empty.npz", out)
    cost = json.loads((out / "cost.json").read_text())
    assert [trial.get("skipped") for trial in cost["trials"]] == ["flat target"] * 2
    assert not list(out.glob("trial*"))


@pytest.mark.workflow
def test_a_missing_depth2img_model_stops_before_any_job(tmp_path):
    from workflow import run_snakemake, tiny_config

    intervention = {
        "enabled": True,
        "task": "depth",
        "depth2img": {"enabled": True, "model": {"id": "stabilityai/no-such-depth"}},
    }
    config = tiny_config(tmp_path, intervention=intervention)
    # A real run (a dry run only warns about absent weights, to show the DAG before a fetch).
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0 and not (tmp_path / "results").exists()
    assert (
        "intervention.depth2img.model: stabilityai/no-such-depth is not in the Hugging Face cache"
        in result.stderr
    )
