"""The world's own models, made by their rules (a short retrain) and loaded back through the
code the workflow uses: the ``world-net`` labeler plugin and the classification experiment's
``load_classifier``. The committed folders are checked against the current recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors import safe_open
from workflow import REPO, run_snakemake, tiny_config

from ldmprobe.classification.jobs import load_classifier
from ldmprobe.classification.prompts import WORLD, resolve_class
from ldmprobe.core.prompts import PromptTableError
from ldmprobe.labels import build_labeler
from ldmprobe.models import ModelRef
from ldmprobe.scenes import nets
from ldmprobe.world.nets import train_dense_labeler

TINY = {"steps": 2, "train_images": 16, "batch_size": 4, "eval_images": 8}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("world")
    weights = workdir / "weights"
    config = tiny_config(
        workdir, world={"weights_dir": str(weights), "labeler": TINY, "classifier": TINY}
    )
    run_snakemake(
        workdir,
        config,
        str(weights / "labeler"),
        str(weights / "classifier"),
        "results/world/model_quality.csv",
    )
    return workdir, weights


def _recipe(folder: Path) -> dict:
    return json.loads((folder / nets.RECIPE_FILE).read_text())


def test_rules_make_fp16_folders_with_their_recipe(retrained):
    workdir, weights = retrained
    for name, tasks in [("labeler", list(nets.DENSE_TASKS)), ("classifier", ["classification"])]:
        record = _recipe(weights / name)
        assert record["tasks"] == tasks
        assert record["recipe"]["steps"] == 2 and record["recipe"]["data_seed"] == 1000
        assert {"torch", "diffusers", "timm", "numpy"} <= set(record["libraries"])
        assert record["train_seconds"] > 0
        assert all(summary["n"] == 8 for summary in record["quality"].values())
        (weights_file,) = (weights / name).glob("*.safetensors")
        with safe_open(weights_file, "pt") as handle:
            tensors = [handle.get_tensor(key) for key in handle.keys()]  # noqa: SIM118
        # Weights in half precision (batch norm's step counter stays an integer).
        assert {str(t.dtype) for t in tensors if t.is_floating_point()} == {"torch.float16"}
    log = (workdir / "results/logs/world/labeler.log").read_text()
    assert "step 2/2" in log
    table = pd.read_csv(workdir / "results/world/model_quality.csv")
    assert set(table["model"]) == {"labeler", "classifier", "exact-fit"}
    assert {"dice", "spearman_objects", "accuracy", "mask_iou", "psnr"} <= set(table["metric"])
    assert (table["ci_low"] <= table["mean"]).all() and (table["mean"] <= table["ci_high"]).all()


def test_retrain_is_deterministic(retrained, tmp_path):
    import torch

    _, weights = retrained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the rule's job (threads: 1)
    try:
        train_dense_labeler(nets.recipe(TINY), tmp_path / "again")
    finally:
        torch.set_num_threads(threads)
    name = "diffusion_pytorch_model.safetensors"
    with (
        safe_open(weights / "labeler" / name, "pt") as first,
        safe_open(tmp_path / "again" / name, "pt") as second,
    ):
        for key in first.keys():  # noqa: SIM118
            assert torch.equal(first.get_tensor(key), second.get_tensor(key)), key


def test_labeler_plugin_loads_the_folder(retrained):
    _, weights = retrained
    images = [
        Image.new("RGB", (48, 48), (120, 110, 100)),
        Image.new("RGB", (48, 48), (220, 30, 30)),
    ]
    for target in nets.DENSE_TASKS:
        ref = ModelRef("labels.tasks.x.model", str(weights / "labeler"))
        maps = build_labeler("world-net", ref, "cpu", False, {"target": target}).predict(images)
        assert maps.shape == (2, 48, 48) and maps.dtype == np.float32 and np.isfinite(maps).all()
        if target == "saliency":
            assert ((maps >= 0) & (maps <= 1)).all()


def test_classifier_declares_the_world_classes(retrained):
    _, weights = retrained
    ref = ModelRef("classification.model", str(weights / "classifier"))
    classifier = load_classifier(ref, classes=WORLD)
    assert classifier.class_ids == nets.CLASSES
    probabilities = classifier.probabilities([Image.new("RGB", (64, 64), (30, 60, 220))])
    assert probabilities.shape == (1, len(nets.CLASSES))
    with pytest.raises(ValueError, match="1000 classes|ImageNet"):
        load_classifier(ref)


def test_world_class_column():
    assert resolve_class("blue cube", "t", WORLD) == nets.CLASSES.index("blue cube")
    assert resolve_class("3", "t", WORLD) == 3
    with pytest.raises(PromptTableError, match="not a class of the world"):
        resolve_class("n07749582", "t", WORLD)


@pytest.mark.parametrize("name", ["labeler", "classifier"])
def test_committed_weights_follow_the_current_recipe(name):
    folder = REPO / "world" / "weights" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not committed")
    defaults = nets.CLASSIFIER_DEFAULTS if name == "classifier" else {}
    expected = json.loads(json.dumps(nets.recipe({}, defaults).__dict__))
    assert _recipe(folder)["recipe"] == expected
