"""VGG-16 over the denoising steps: statistics on constructed probability tables, the class
column of the prompt table, the classifier loaded through timm, and the workflow's rules."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image
from workflow import jobs_to_run, run_snakemake, tiny_config

from ldmprobe.classification.figures import first_correct_figure, topk_figure
from ldmprobe.classification.jobs import classify_job, first_correct_figure_job, load_classifier
from ldmprobe.classification.prompts import imagenet_classes, load_classification_prompts
from ldmprobe.classification.stats import (
    FINAL,
    class_ranks,
    curves_table,
    final_table,
    first_correct_table,
    settled_step,
    summary_table,
    top_k_table,
)
from ldmprobe.core.io import write_csv
from ldmprobe.core.metrics import bootstrap_ci
from ldmprobe.core.prompts import PromptTableError
from ldmprobe.models import MissingModelError, ModelRef

REPO = Path(__file__).resolve().parents[1]

# --- statistics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "ranks", "k", "expected"),
    [
        ([0, 1, 2, 3, 4, 5], [5, 3, 1, 2, 1, 1], 1, 4),  # a later dip resets it
        ([0, 1, 2, 3, 4, 5], [5, 3, 1, 2, 1, 1], 5, 0),  # always in the top-5
        ([0, 1, 2, 3, 4, 5], [9, 7, 6, 5, 2, 1], 5, 3),
        ([0, 1, 2, 3], [1, 1, 1, 2], 1, None),  # lost at the last step
        ([0, 1, 2], [1, 1, 1], 1, 0),
        ([0, 2, 4, 7], [1, 9, 1, 1], 1, 4),  # a step grid with gaps
        ([3], [1], 1, 3),
        ([], [], 1, None),
    ],
)
def test_settled_step(steps, ranks, k, expected):
    assert settled_step(steps, ranks, k) == expected


def test_settled_step_refuses_bad_input():
    with pytest.raises(ValueError, match="ascending"):
        settled_step([0, 2, 1], [1, 1, 1], 1)
    with pytest.raises(ValueError, match="one rank per step"):
        settled_step([0, 1], [1], 1)


NAMES = [f"class{i}" for i in range(8)]
IDS = [f"n{i:08d}" for i in range(8)]


def test_ranks_top_k_and_curves_of_a_probability_table():
    probabilities = np.array(
        [
            [0.40, 0.30, 0.10, 0.05, 0.05, 0.04, 0.03, 0.03],
            [0.05, 0.10, 0.50, 0.20, 0.05, 0.04, 0.03, 0.03],
            [0.05, 0.10, 0.15, 0.20, 0.05, 0.04, 0.01, 0.40],
        ]
    )
    # Ties share the better rank: class 3 and 4 in row 0 are both 4th.
    assert class_ranks(probabilities, [0, 3, 4, 6]).tolist() == [
        [1, 4, 4, 7],
        [4, 2, 4, 7],
        [5, 2, 5, 8],
    ]
    kinds, steps = ["x0", "x0", FINAL], [0, 1, 2]
    topk = top_k_table(probabilities, kinds, steps, 2, IDS, NAMES)
    assert topk[["kind", "step", "rank", "class_index"]].values.tolist() == [
        ["x0", 0, 1, 0], ["x0", 0, 2, 1],
        ["x0", 1, 1, 2], ["x0", 1, 2, 3],
        [FINAL, 2, 1, 7], [FINAL, 2, 2, 3],
    ]  # fmt: skip
    assert topk["probability"].tolist() == [0.40, 0.30, 0.50, 0.20, 0.40, 0.20]
    assert topk.loc[4, "class_name"] == "class7" and topk.loc[4, "class_id"] == IDS[7]

    # The target (6) is never in the top-2 but has a full curve; so does every top-2 class.
    curves = curves_table(probabilities, kinds, steps, 6, 2, IDS, NAMES)
    assert set(curves["class_index"]) == {6, 0, 1, 2, 3, 7}
    assert len(curves) == 6 * 3
    target = curves[curves["is_target"]]
    assert target["class_index"].unique().tolist() == [6]
    assert target["probability"].tolist() == [0.03, 0.03, 0.01]
    assert target["rank"].tolist() == [7, 7, 8]
    class7 = curves[curves["class_index"] == 7]
    assert class7["probability"].tolist() == [0.03, 0.03, 0.40]
    assert class7["rank"].tolist() == [7, 7, 1]


def curves_of(prompt_id, seed, class_index, name, target_ranks, final_probability, final_rank):
    """A constructed curves table: target ranks per kind over steps 0..n-1, the final image,
    and a distractor class that must be ignored."""
    rows = []
    for kind, ranks in target_ranks.items():
        for step, rank in enumerate(ranks):
            rows.append((kind, step, class_index, name, True, 0.5 / rank, rank))
            rows.append((kind, step, 999, "distractor", False, 0.9, 1))
    rows.append((FINAL, len(ranks), class_index, name, True, final_probability, final_rank))
    rows.append((FINAL, len(ranks), 999, "distractor", False, 0.01, 2))
    frame = pd.DataFrame(
        rows,
        columns=["kind", "step", "class_index", "class_name", "is_target", "probability", "rank"],
    )
    frame.insert(0, "prompt_id", prompt_id)
    frame.insert(1, "seed", seed)
    return frame


@pytest.fixture
def constructed():
    curves = pd.concat(
        [
            # Lemons: top-1 from steps 3 and 4 on x0, top-5 from 1 and 2; confident at the end.
            curves_of("lemon", 1, 951, "lemon",
                      {"x0": [9, 4, 2, 1, 1, 1], "xt": [9, 9, 9, 6, 1, 1]}, 0.99, 1),
            curves_of("lemon", 2, 951, "lemon",
                      {"x0": [9, 9, 5, 3, 1, 1], "xt": [9, 9, 9, 9, 9, 1]}, 0.985, 1),
            # The orange never becomes top-1 on x0 (it drops out at the last step).
            curves_of("orange", 1, 950, "orange",
                      {"x0": [8, 7, 3, 1, 1, 2], "xt": [9, 9, 8, 4, 3, 2]}, 0.30, 2),
        ],
        ignore_index=True,
    )  # fmt: skip
    return curves


def test_first_correct_and_final_tables(constructed):
    first = first_correct_table(constructed, [1, 5])
    step = {
        (row.prompt_id, row.seed, row.kind, row.criterion): row.step for row in first.itertuples()
    }
    assert step[("lemon", 1, "x0", "top1")] == 3 and step[("lemon", 1, "x0", "top5")] == 1
    assert step[("lemon", 2, "x0", "top1")] == 4 and step[("lemon", 2, "x0", "top5")] == 2
    assert step[("lemon", 1, "xt", "top1")] == 4 and step[("lemon", 2, "xt", "top1")] == 5
    assert pd.isna(step[("orange", 1, "x0", "top1")])
    assert step[("orange", 1, "x0", "top5")] == 2 and step[("orange", 1, "xt", "top5")] == 3
    assert len(first) == 3 * 2 * 2 and (first["n_steps"] == 6).all()

    final = final_table(constructed)
    assert final[["prompt_id", "probability", "rank"]].values.tolist() == [
        ["lemon", 0.99, 1], ["lemon", 0.985, 1], ["orange", 0.30, 2],
    ]  # fmt: skip


def test_summary_over_images(constructed):
    first = first_correct_table(constructed, [1, 5])
    final = final_table(constructed)
    summary = summary_table(first, final, [1, 5], n_resamples=500, level=0.9, seed=3)
    row = summary.set_index(["statistic", "kind", "criterion", "target"])

    # Mean over the images that settle, with the bootstrap of exactly those values.
    x0_top1 = row.loc[("first_correct_step", "x0", "top1", "all")]
    assert x0_top1["mean"] == pytest.approx(3.5) and x0_top1["n"] == 2
    low, high = bootstrap_ci(np.array([3.0, 4.0]), 500, 0.9, 3)
    assert (x0_top1["ci_low"], x0_top1["ci_high"]) == pytest.approx((low, high))
    assert 3.0 <= x0_top1["ci_low"] < x0_top1["ci_high"] <= 4.0

    settled = row.loc[("settled_fraction", "x0", "top1", "all")]
    assert settled["mean"] == pytest.approx(2 / 3) and settled["n"] == 3
    assert row.loc[("first_correct_step", "xt", "top5", "all"), "mean"] == pytest.approx(
        (4 + 5 + 3) / 3
    )

    # The study's number: the mean confidence on the final lemons.
    lemons = row.loc[("final_probability", FINAL, "", "lemon")]
    assert lemons["mean"] == pytest.approx(0.9875) and lemons["n"] == 2
    assert row.loc[("final_accuracy", FINAL, "top1", "all"), "mean"] == pytest.approx(2 / 3)
    assert row.loc[("final_accuracy", FINAL, "top5", "all"), "mean"] == pytest.approx(1.0)

    # An orange that never settles: no mean, n = 0, and its settled fraction is 0.
    orange = row.loc[("first_correct_step", "x0", "top1", "orange")]
    assert np.isnan(orange["mean"]) and orange["n"] == 0
    assert row.loc[("settled_fraction", "x0", "top1", "orange"), "mean"] == 0.0
    assert set(summary["target"]) == {"all", "lemon", "orange"}


def test_first_correct_figure_with_probe_emergence(constructed, tmp_path):
    first = first_correct_table(constructed, [1, 5])
    summary = summary_table(first, final_table(constructed), [1, 5], n_resamples=50)
    # Shaped like results/tables/emergence.csv: one row per (task, layer, source, metric).
    rows = [
        ("depth", "up3.2", "unet", "spearman", 2, 1, 3),
        ("depth", "mid.0", "unet", "spearman", None, None, None),  # never emerges
        ("depth", "up3.2", "unet", "rmse", 4, 3, 5),  # not the headline metric of depth
        ("depth", "preview", "labeler", "spearman", 3, 2, 4),
        ("saliency", "up3.2", "unet", "dice", 3, 2, 5),
    ]
    emergence = pd.DataFrame(
        rows, columns=["task", "layer", "source", "metric", "step", "ci_low", "ci_high"]
    )
    without, beside = tmp_path / "without.png", tmp_path / "beside.png"
    classifier_rows = first_correct_figure(first, summary, without)
    assert classifier_rows == [
        "classifier on x0, top-1 (2/3 settle)",
        "classifier on x0, top-5 (3/3 settle)",
        "classifier on xt, top-1 (2/3 settle)",
        "classifier on xt, top-5 (3/3 settle)",
    ]
    labels = first_correct_figure(first, summary, beside, emergence, note="constructed")
    assert labels == [
        *classifier_rows,
        "depth emergence (labeler, spearman), 1 layer",
        "depth emergence (unet, spearman), 2 layers",
        "saliency emergence (unet, dice), 1 layer",
    ]
    assert Image.open(beside).size[1] > Image.open(without).size[1]
    # The brief's minimal table (no metric column) draws too; a table without steps does not.
    minimal = emergence[emergence["metric"] != "rmse"].drop(columns="metric")
    assert first_correct_figure(first, summary, tmp_path / "minimal.png", minimal)[-1] == (
        "saliency emergence (unet), 1 layer"
    )
    with pytest.raises(ValueError, match=r"lacks the columns \['step'\]"):
        first_correct_figure(first, summary, tmp_path / "bad.png", minimal.drop(columns="step"))


def test_first_correct_figure_job_reads_the_emergence_table(constructed, tmp_path):
    """The job as the rule runs it: tables from CSV, steps that never emerge written empty."""
    first = first_correct_table(constructed, [1, 5])
    summary = summary_table(first, final_table(constructed), [1, 5], n_resamples=50)
    first_path, summary_path = tmp_path / "first.csv", tmp_path / "summary.csv"
    write_csv(first_path, first)
    write_csv(summary_path, summary)
    emergence = pd.DataFrame(
        {
            "task": ["depth", "depth"],
            "layer": ["up3.2", "mid.0"],
            "source": ["unet", "unet"],
            "metric": ["spearman", "spearman"],
            "step": pd.array([2, None], dtype="Int64"),
            "ci_low": pd.array([1, None], dtype="Int64"),
            "ci_high": pd.array([3, None], dtype="Int64"),
        }
    )
    emergence_path = tmp_path / "emergence.csv"
    write_csv(emergence_path, emergence)
    out = tmp_path / "figure.png"
    first_correct_figure_job(
        str(first_path), str(summary_path), str(emergence_path), "note", str(out)
    )
    assert Image.open(out).size[1] > 400
    write_csv(emergence_path, emergence.drop(columns=["ci_low", "ci_high"]))
    with pytest.raises(ValueError, match=rf"{re.escape(str(emergence_path))}: .*lacks the columns"):
        first_correct_figure_job(
            str(first_path), str(summary_path), str(emergence_path), "", str(out)
        )


def test_topk_figure(tmp_path):
    """Figures 5-6 from constructed tables, also when the target is the only top-1 class."""
    probabilities = np.full((7, 8), 0.02)
    probabilities[:, 5] = np.linspace(0.1, 0.86, 7)  # the target rises to the top
    probabilities[:3, 2] = 0.5
    kinds, steps = ["x0"] * 3 + ["xt"] * 3 + [FINAL], [0, 1, 2, 0, 1, 2, 3]
    for kind in ("x0", "xt"):
        (tmp_path / kind).mkdir()
        for step in range(3):
            Image.new("RGB", (16, 16), (40 * step, 0, 0)).save(
                tmp_path / kind / f"step{step:03d}.png"
            )
    Image.new("RGB", (16, 16)).save(tmp_path / "image.png")
    for k in (1, 3):
        topk = top_k_table(probabilities, kinds, steps, k, IDS, NAMES)
        curves = curves_table(probabilities, kinds, steps, 5, k, IDS, NAMES)
        out = tmp_path / f"top{k}.png"
        topk_figure(topk, curves, tmp_path, tmp_path / "image.png", "title", out, "note")
        assert Image.open(out).size[0] > 500


# --- the class column of the prompt table ----------------------------------------------------

HEADER = "prompt_id,prompt,seed,imagenet_class\n"


def load_table(tmp_path, text, **columns):
    path = tmp_path / "classes.csv"
    path.write_text(text)
    spec = {"files": [{"path": str(path)}], "encoding": "utf-8"}
    if columns:
        spec["columns"] = {
            "id": "prompt_id", "prompt": "prompt", "seed": "seed", "target": "imagenet_class"
        } | columns  # fmt: skip
    return load_classification_prompts(spec)


def test_class_column_takes_indices_and_wordnet_ids(tmp_path):
    table = load_table(
        tmp_path,
        HEADER + "lemon,lemon,11, 951 \norange,orange fruit,22,n07747607\ncar,a car,3,817\n",
    )
    columns = ["prompt_id", "seed", "class_index", "class_id", "class_name"]
    assert table[columns].values.tolist() == [
        ["car", 3, 817, "n04285008", "sports car, sport car"],
        ["lemon", 11, 951, "n07749582", "lemon"],
        ["orange", 22, 950, "n07747607", "orange"],
    ]  # fmt: skip


def test_class_column_can_be_renamed(tmp_path):
    table = load_table(tmp_path, "prompt_id,prompt,seed,cls\na,x,1,207\n", target="cls")
    assert table["class_name"].tolist() == ["golden retriever"]


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        ("a,x,1,951\nb,x,2,1000\n", 3, "out of range"),
        ("a,x,1,lemon\n", 2, re.escape("it is the name of class 951 (n07749582)")),
        ("a,x,1,n99999999\n", 2, "neither an ImageNet-1k class index nor a WordNet id"),
        ("a,x,1,\n", 2, "empty"),
        ("a,x,1,-3\n", 2, "neither"),
        ("a,x,1,\uff19\uff15\uff11\n", 2, "neither"),  # full-width digits are not an index
    ],
)
def test_bad_class_names_the_line(tmp_path, rows, line, message):
    with pytest.raises(PromptTableError, match=message) as error:
        load_table(tmp_path, HEADER + rows)
    assert str(error.value).startswith("classification.prompts: prompt table ")
    assert f"line {line}:" in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "prompt_id,prompt,seed\na,x,1\n",
            r"no column 'imagenet_class' \(config key classification.prompts.columns.target\)",
        ),
        (
            "prompt_id,prompt,seed,imagenet_class,imagenet_class\na,x,1,1,2\n",
            "column 'imagenet_class' appears 2 times",
        ),
        (HEADER + "a,x,1.5,951\n", "line 2: seed"),  # the id/prompt/seed checks still apply
    ],
)
def test_bad_table_layout(tmp_path, text, message):
    with pytest.raises(PromptTableError, match=message):
        load_table(tmp_path, text)


def test_shipped_tables():
    from ldmprobe.core.config import load_config

    for name in ("config.yaml", "demo.yaml"):
        section = load_config(REPO / "config" / name)["classification"]
        table = load_classification_prompts(section["prompts"], REPO)
        assert table["seed"].map(type).eq(int).all()
    full = load_classification_prompts({"files": [{"path": "config/imagenet_prompts.csv"}]}, REPO)
    assert full["class_index"].nunique() >= 10
    assert full.groupby("class_index").size().min() >= 3
    assert {"lemon", "orange"} <= set(full["class_name"])


def test_class_names_are_timms():
    from ldmprobe.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    synsets, names = imagenet_classes()
    assert list(synsets) == info.label_names()
    assert list(names) == [info.index_to_description(i) for i in range(info.num_classes())]


# --- the classifier --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16(tmp_path_factory):
    from ldmprobe.models.demo_models import build_demo_model

    path = tmp_path_factory.mktemp("models") / "vgg16"
    build_demo_model("vgg16", path, seed=0)
    return path


def test_random_vgg16_round_trip(vgg16):
    import torch
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    classifier = load_classifier(ModelRef("classification.model", str(vgg16)))
    assert type(classifier.model).__name__ == "VGG"
    saved = load_file(vgg16 / "model.safetensors")
    loaded = classifier.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert not classifier.model.training
    assert classifier.class_ids[951] == "n07749582"
    assert classifier.class_names == tuple(ImageNetInfo().label_descriptions())
    # vgg16.tv_in1k's own preprocessing: 224 px centre crop of a 256 px resize, ImageNet stats.
    assert classifier.data_config["input_size"] == (3, 224, 224)
    assert classifier.data_config["crop_pct"] == 0.875
    assert classifier.transform(Image.new("RGB", (64, 64))).shape == (3, 224, 224)


def test_preprocessing_comes_from_the_saved_config(vgg16, tmp_path):
    """A model folder whose config asks for another input size and normalisation gets them."""
    changed = tmp_path / "vgg16-160"
    changed.mkdir()
    os.symlink(vgg16 / "model.safetensors", changed / "model.safetensors")
    config = json.loads((vgg16 / "config.json").read_text())
    config["pretrained_cfg"].update(
        input_size=[3, 160, 160], crop_pct=1.0, mean=[0.5] * 3, std=[0.25] * 3
    )
    (changed / "config.json").write_text(json.dumps(config))
    classifier = load_classifier(ModelRef("classification.model", str(changed)))
    pixels = classifier.transform(Image.new("RGB", (64, 64), (255, 255, 255)))
    assert pixels.shape == (3, 160, 160)
    assert np.allclose(pixels.numpy(), (1.0 - 0.5) / 0.25)


def test_hub_id_is_found_in_the_hugging_face_cache(vgg16, tmp_path, monkeypatch):
    """``timm/vgg16.tv_in1k`` resolves offline to its snapshot in the cache (hub layout)."""
    import huggingface_hub.constants

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--timm--vgg16.tv_in1k"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        os.symlink(vgg16 / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    classifier = load_classifier(ModelRef("classification.model", "timm/vgg16.tv_in1k"))
    assert classifier.model.num_classes == 1000
    with pytest.raises(MissingModelError, match="classification.model: timm/vgg16.bn_in1k"):
        load_classifier(ModelRef("classification.model", "timm/vgg16.bn_in1k"))


def test_a_folder_without_a_timm_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a timm model folder"):
        load_classifier(ModelRef("classification.model", str(tmp_path)))


def test_classify_job_on_a_generated_image(vgg16, tmp_path):
    """Every preview of both kinds and the final image, through the real random VGG-16."""
    generation = tmp_path / "generation"
    rng = np.random.default_rng(0)
    for kind in ("x0", "xt"):
        (generation / "previews" / kind).mkdir(parents=True)
        for step in range(3):
            pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(generation / "previews" / kind / f"step{step:03d}.png")
    shutil.copy(generation / "previews/x0/step002.png", generation / "image.png")
    (generation / "meta.json").write_text(json.dumps({"unet_calls": 3, "timesteps": [999, 500, 1]}))
    paths = {"topk": tmp_path / "topk.csv", "curves": tmp_path / "curves.csv"}
    classify_job(
        model={"id": str(vgg16)},
        allow_download=False,
        device="cpu",
        batch_size=4,
        top_k=5,
        kinds=["x0", "xt"],
        images=[
            {
                "prompt_id": "lemon",
                "seed": 11,
                "target": 951,
                "image": str(generation / "image.png"),
                "previews": str(generation / "previews"),
                "meta": str(generation / "meta.json"),
                **{key: str(path) for key, path in paths.items()},
            }
        ],
    )
    topk = pd.read_csv(paths["topk"])
    curves = pd.read_csv(paths["curves"])
    assert len(topk) == (2 * 3 + 1) * 5
    assert list(topk.columns) == [
        "prompt_id", "seed", "kind", "step", "timestep", "rank", "class_index", "class_id",
        "class_name", "probability", "ldmprobe_version",
    ]  # fmt: skip
    final = topk[topk["kind"] == FINAL]
    assert final["step"].unique().tolist() == [3] and final["timestep"].isna().all()
    assert topk[topk["kind"] == "xt"]["timestep"].unique().tolist() == [999, 500, 1]
    for _, group in topk.groupby(["kind", "step"]):
        assert group["rank"].tolist() == [1, 2, 3, 4, 5]
        assert group["probability"].is_monotonic_decreasing
    target = curves[curves["is_target"]]
    assert len(target) == 7 and (target["class_index"] == 951).all()
    # The final image is the last x0 preview, so the classifier must agree on both.
    last_x0 = topk[(topk["kind"] == "x0") & (topk["step"] == 2)]
    assert last_x0["class_index"].tolist() == final["class_index"].tolist()
    assert np.allclose(last_x0["probability"], final["probability"], rtol=1e-4)
    # Every class of the top-5 tables has a curve at every step of every kind.
    assert set(topk["class_index"]) <= set(curves["class_index"])
    assert (curves.groupby("class_index").size() == 7).all()


# --- the workflow ----------------------------------------------------------------------------


@pytest.mark.workflow
def test_workflow_classifies_every_step(tmp_path):
    """Two prompts through generation, VGG-16 on both preview kinds, tables, figures, report."""
    table = tmp_path / "classes.csv"
    table.write_text(HEADER + "lemon,lemon,11,951\norange,orange fruit,22,n07747607\n")
    config = tiny_config(
        tmp_path,
        classification__enabled=True,
        classification__prompts={"files": [{"path": str(table)}]},
        # The demo classifies x0 only; the test covers both kinds.
        classification__preview_kinds=["x0", "xt"],
        generation__steps=3,
    )
    run_snakemake(tmp_path, config, "classification")
    results = tmp_path / "results" / "classification"

    latents = zarr.open_group(str(results / "generation/lemon/11/latents.zarr"), mode="r")
    assert sorted(latents.group_keys()) == ["latents"]  # no activations for these images
    assert json.loads((results / "generation/lemon/11/meta.json").read_text())["cfg_halves"] == []

    topk = pd.read_csv(results / "predictions/orange/22/topk.csv")
    assert len(topk) == (2 * 3 + 1) * 5
    curves = pd.read_csv(results / "predictions/orange/22/curves.csv")
    target = curves[curves["is_target"]]
    assert (target["class_index"] == 950).all() and len(target) == 2 * 3 + 1

    first = pd.read_csv(results / "tables/first_correct.csv")
    assert len(first) == 2 * 2 * 2 and set(first["criterion"]) == {"top1", "top5"}
    summary = pd.read_csv(results / "tables/summary.csv", keep_default_na=False)
    assert set(summary["statistic"]) == {
        "first_correct_step", "settled_fraction", "final_probability", "final_accuracy"
    }  # fmt: skip
    assert set(summary["target"]) == {"all", "lemon", "orange"}
    final = pd.read_csv(results / "tables/final_images.csv")
    assert final["class_index"].tolist() == [951, 950]
    # The final image's target probability, from the per-image curves to the summary. Tables
    # hold 6 significant digits (io.write_csv), so values read back agree to about 5e-6.
    digits = 1e-5
    final_target = target[target["kind"] == FINAL]["probability"]
    assert final.loc[1, "probability"] == pytest.approx(final_target.item(), rel=digits)
    mean_final = summary[
        (summary["statistic"] == "final_probability") & (summary["target"] == "all")
    ]["mean"]
    assert float(mean_final.item()) == pytest.approx(final["probability"].mean(), rel=digits)
    for name in ("topk/lemon/11.png", "topk/orange/22.png", "first_correct.png"):
        assert (results / "figures" / name).stat().st_size > 5_000
    assert not list(results.rglob(".*tmp-*")), "temporary files left behind"

    assert jobs_to_run(run_snakemake(tmp_path, config, "-n", "classification")) == {}
    run_snakemake(tmp_path, config, "--report", "results/report.html", "classification")
    html = (tmp_path / "results/report.html").read_text(errors="replace")
    assert "Classification" in html and "first_correct.png" in html
    assert "random-weight" in html


@pytest.mark.workflow
def test_classification_target_needs_the_flag(tmp_path):
    result = run_snakemake(tmp_path, tiny_config(tmp_path), "-n", "classification", check=False)
    assert result.returncode != 0
    assert "classification.enabled: true" in result.stderr


@pytest.mark.workflow
def test_missing_classifier_stops_before_any_job(tmp_path):
    config = tiny_config(
        tmp_path, classification__enabled=True, classification__model={"id": "timm/no-such-vgg"}
    )
    # A real run (a dry run only warns about absent weights, to show the DAG before a fetch).
    result = run_snakemake(tmp_path, config, check=False)
    assert result.returncode != 0 and not (tmp_path / "results").exists()
    assert "classification.model: timm/no-such-vgg is not in the Hugging Face cache" in (
        result.stderr
    )
