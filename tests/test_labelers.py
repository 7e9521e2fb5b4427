"""Every labeler plugin that installs here, on random weights of its real architecture.

Each model is built by ``ldmprobe.models.demo_models``, saved the way its library stores it, and
loaded back through the plugin's own loading code (``build_labeler``), as real weights would be.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from ldmprobe.core.compat import ensure_torchvision_importable
from ldmprobe.core.config import ConfigError
from ldmprobe.core.tasks import TASKS
from ldmprobe.labels import (
    build_labeler,
    check_labelers,
    label_model_ref,
    load_label,
    load_provenance,
    to_target,
)
from ldmprobe.labels.labelers import LabelerUnavailable
from ldmprobe.labels.labelers.shading import LUMINANCE, grey_shading, uninvert_shading
from ldmprobe.models import MissingModelError, preflight
from ldmprobe.models.demo_models import build_demo_model

REPO_CONFIG = "config/demo.yaml"
HEIGHT, WIDTH = 64, 96  # not square and not the models' input size: outputs must be resized


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Builds each kind once per module, on first use."""
    root = tmp_path_factory.mktemp("label-models")

    def get(kind: str):
        path = root / kind
        if not path.exists():
            build_demo_model(kind, path, seed=0)
        return path

    return get


def images(count: int, height: int = HEIGHT, width: int = WIDTH) -> list:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for _ in range(count)
    ]


def build(labeler: str, path, **options):
    section = {"labeler": labeler, "model": {"id": str(path)}, "options": options}
    ref = label_model_ref(TASKS_OF[labeler], section)
    return build_labeler(labeler, ref, "cpu", False, options)


TASKS_OF = {
    "dpt": "depth",
    "depth-anything": "depth",
    "rembg": "saliency",
    "tracer": "saliency",
    "marigold": "shading",
    "intrinsic": "shading",
}


def assert_eight_bit_maps(maps: np.ndarray, count: int) -> None:
    assert maps.shape == (count, HEIGHT, WIDTH) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps * 255, np.round(maps * 255), atol=1e-3)


@pytest.mark.parametrize(
    ("kind", "labeler"),
    [
        ("dpt-depth", "dpt"),
        ("dpt-hybrid-depth", "dpt"),
        ("dpt-beit-depth", "dpt"),
        ("depth-anything", "depth-anything"),
    ],
)
def test_depth_is_the_models_inverse_depth_resized(models, kind, labeler):
    import torch

    ensure_torchvision_importable()
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    path = models(kind)
    maps = build(labeler, path).predict(images(2))
    assert maps.shape == (2, HEIGHT, WIDTH) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.std() > 0

    # Convention: the model's own prediction, bicubic-resized, neither inverted nor rescaled.
    model = AutoModelForDepthEstimation.from_pretrained(path).eval()
    inputs = AutoImageProcessor.from_pretrained(path)(images=images(2), return_tensors="pt")
    with torch.no_grad():
        depth = model(**inputs).predicted_depth[:, None]
    expected = torch.nn.functional.interpolate(
        depth, (HEIGHT, WIDTH), mode="bicubic", align_corners=False
    )[:, 0]
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_depth_labeler_refuses_a_model_of_the_other_family(models):
    with pytest.raises(ValueError, match="is a 'dpt' model; labeler 'depth-anything' loads"):
        build("depth-anything", models("dpt-depth"))


def test_rembg_session_loads_from_the_folder_and_gives_eight_bit_masks(models):
    labeler = build("rembg", models("rembg-u2netp"), session="u2netp")
    maps = labeler.predict(images(2))
    assert_eight_bit_maps(maps, 2)
    assert maps.std() > 0
    target = to_target(TASKS["saliency"], maps, labeler.settings)
    assert set(np.unique(target)) <= {0.0, 1.0}
    np.testing.assert_array_equal(target, maps > 0.5)


def test_rembg_finds_the_file_in_the_rembg_home_layout(models, tmp_path):
    home = tmp_path / "rembg-home"
    (home / "models" / "u2netp").mkdir(parents=True)
    (home / "models" / "u2netp" / "u2netp.onnx").symlink_to(models("rembg-u2netp") / "u2netp.onnx")
    maps = build("rembg", home, session="u2netp").predict(images(1))
    assert_eight_bit_maps(maps, 1)


def test_tracer_loads_carvekits_checkpoint_and_rejects_other_state_dicts(models, tmp_path):
    import torch

    labeler = build("tracer", models("tracer-saliency"), input_size=128)
    assert_eight_bit_maps(labeler.predict(images(2)), 2)
    assert labeler.settings["threshold"] == 0.0  # the reference: any value > 0 is foreground

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "tracer_b7.pth")
    with pytest.raises(ValueError, match="is not a TRACER-B7 state dict"):
        build("tracer", tmp_path, input_size=128)


def test_marigold_gives_grey_linear_shading_independent_of_the_batch(models):
    labeler = build("marigold", models("marigold-shading"), steps=1, processing_resolution=0)
    assert labeler.prediction_space == "linear"
    first, second = images(2)
    maps = labeler.predict([first, second])
    assert maps.shape == (2, HEIGHT, WIDTH) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.std() > 0
    # Each image has its own seeded generator: its label does not depend on its batch.
    np.testing.assert_allclose(labeler.predict([second])[0], maps[1], atol=1e-5)


def test_marigold_refuses_a_model_without_the_target(models):
    with pytest.raises(ValueError, match=r"predicts \['albedo', 'shading', 'residual'\], not"):
        build("marigold", models("marigold-shading"), target="normals")


def test_grey_shading_and_uninverted_shading_conventions():
    rgb = np.array([[[0.25, 0.5, 1.0]]], dtype=np.float32)
    assert grey_shading(rgb, "linear")[0, 0] == pytest.approx(float(rgb[0, 0] @ LUMINANCE))
    assert grey_shading(rgb, "srgb")[0, 0] == pytest.approx(float(rgb[0, 0] ** 2.2 @ LUMINANCE))
    assert grey_shading(np.ones((2, 2, 3), np.float32), "linear") == pytest.approx(1.0)
    shading = np.array([0.0, 0.5, 3.0], dtype=np.float32)
    np.testing.assert_allclose(uninvert_shading(1 / (1 + shading)), shading, rtol=1e-6)
    assert uninvert_shading(np.array([0.0]))[0] == pytest.approx(999.0)  # clipped at 1e-3


def test_intrinsic_is_optional_and_says_how_to_install_it(tmp_path):
    command = "pip install git+https://github.com/compphoto/Intrinsic@v1.0"
    with pytest.raises(LabelerUnavailable, match=f"needs .* Install it with: {re.escape(command)}"):
        build("intrinsic", tmp_path)
    tasks = {"shading": {"labeler": "intrinsic", "model": {"id": "x"}, "options": {}}}
    with pytest.raises(ConfigError, match=f"'labels.tasks.shading': .*{re.escape(command)}"):
        check_labelers(tasks)


def test_unknown_option_names_the_labelers_options():
    tasks = {"depth": {"labeler": "dpt", "model": {"id": "x"}, "options": {"treshold": 1}}}
    with pytest.raises(ConfigError, match=r"labeler 'dpt' has no option\(s\) \['treshold'\]"):
        check_labelers(tasks)


def test_targets_of_each_kind():
    raw = np.array([[[0.0, 0.2], [0.6, 1.0]]], dtype=np.float32)
    np.testing.assert_array_equal(to_target(TASKS["saliency"], raw, {}), raw > 0)
    np.testing.assert_array_equal(to_target(TASKS["saliency"], raw, {"threshold": 0.5}), raw > 0.5)
    np.testing.assert_array_equal(to_target(TASKS["depth"], raw * 4, {}), raw * 4)
    np.testing.assert_allclose(to_target(TASKS["depth"], raw * 4 + 1, {"normalise": "minmax"}), raw)
    standard = to_target(TASKS["shading"], raw, {"normalise": "standard"})
    assert standard.mean() == pytest.approx(0, abs=1e-6) and standard.std() == pytest.approx(1)


def test_label_job_writes_targets_raw_maps_and_provenance(models, tmp_path):
    from ldmprobe import jobs

    image = tmp_path / "image.png"
    images(1)[0].save(image)
    previews = tmp_path / "previews"
    (previews / "x0").mkdir(parents=True)
    for step, preview in enumerate(images(3)):
        preview.save(previews / "x0" / f"step{step:03d}.png")
    section = {
        "labeler": "rembg",
        "model": {"id": str(models("rembg-u2netp")), "revision": None},
        "options": {"session": "u2netp", "threshold": 0.5},
    }
    out = tmp_path / "label.npz"
    images_of_job = [{"image": str(image), "previews": str(previews), "out": str(out)}]
    jobs.label("saliency", section, False, "cpu", 2, images_of_job)
    label = load_label(out)
    assert label["raw"].shape == (HEIGHT, WIDTH)
    assert label["preview_raw"].shape == (3, HEIGHT, WIDTH)
    np.testing.assert_array_equal(label["preview_target"], label["preview_raw"] > 0.5)
    provenance = load_provenance(out)
    assert provenance["labeler"] == "rembg" and provenance["model"] == section["model"]["id"]
    assert provenance["labeler_info"]["options"]["session"] == "u2netp"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_label_file_names_itself_and_its_rule(damage, tmp_path):
    path = tmp_path / "label.npz"
    maps = np.zeros((2, 4, 4), np.float32)
    np.savez(path, target=maps[0], raw=maps[0], preview_target=maps, preview_raw=maps)
    assert load_label(path, keys=("target",))["target"].shape == (4, 4)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file" * 10)
    else:
        path.unlink()
    message = r"label file .*label\.npz is missing or corrupt.*a 'label' job"
    with pytest.raises(RuntimeError, match=message):
        load_label(path, keys=("target",))


def test_preflight_lists_every_missing_model_with_how_to_get_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    tasks = {
        "saliency": {"labeler": "tracer", "model": {"id": "Carve/tracer_b7"}},
        "depth": {"labeler": "dpt", "model": {"id": str(tmp_path / "no-such-dir")}},
        "shading": {"labeler": "rembg", "model": {"id": str(empty)}},
    }
    refs = [label_model_ref(task, section) for task, section in tasks.items()]
    with pytest.raises(MissingModelError) as raised:
        preflight(refs, allow_download=False)
    message = str(raised.value)
    assert "hf download Carve/tracer_b7 tracer_b7.pth" in message
    assert f"labels.tasks.depth.model: local directory '{tmp_path / 'no-such-dir'}'" in message
    assert "labels.tasks.shading.model" in message and "lacks birefnet-hrsod.onnx" in message
    assert "rembg d birefnet-hrsod" in message


def test_workflow_stops_before_any_job_listing_missing_packages_and_models(tmp_path):
    """Through the Snakefile: one message, no traceback, nothing scheduled."""
    from workflow import REPO, run_snakemake

    config = yaml.safe_load((REPO / REPO_CONFIG).read_text())
    config["prompts"]["files"] = [{"path": str(REPO / "config/prompts.csv")}]
    config["labels"]["tasks"] = {
        "saliency": {"labeler": "tracer", "model": {"id": "Carve/tracer_b7"}},
        "shading": {
            "labeler": "intrinsic",
            "model": {"id": "./intrinsic-weights"},
            # The previews' own labeler is resolved like any other model.
            "previews": {"labeler": "marigold", "model": {"id": "./no-marigold"}},
        },
    }
    config["classification"]["enabled"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, path, "-n", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Job stats" not in result.stdout
    for fragment in (
        "'labels.tasks.shading': labeler 'intrinsic' needs",
        "Install it with: pip install git+https://github.com/compphoto/Intrinsic@v1.0",
        "labels.tasks.saliency.model: Carve/tracer_b7 is not in the Hugging Face cache",
        "`hf download Carve/tracer_b7 tracer_b7.pth`",
        "labels.tasks.shading.model: local directory './intrinsic-weights' does not exist",
        "final_weights.pt",
        "labels.tasks.shading.previews.model: local directory './no-marigold' does not exist",
    ):
        assert fragment in result.stderr


def test_demo_config_covers_every_task_with_a_demo_model():
    from workflow import REPO

    from ldmprobe.models.demo_models import BUILDERS

    config = yaml.safe_load((REPO / REPO_CONFIG).read_text())
    tasks = config["labels"]["tasks"]
    assert set(tasks) == set(TASKS)
    for section in tasks.values():
        assert section["model"]["id"].startswith(config["models"]["demo_dir"] + "/")
        assert section["model"]["id"].rsplit("/", 1)[1] in BUILDERS
    check_labelers(tasks)


def test_demo_model_records_random_weights(models):
    record = json.loads((models("rembg-u2netp") / "ldmprobe-demo.json").read_text())
    assert record.pop("ldmprobe_version").startswith("0.1.0+src.")
    assert record == {"kind": "rembg-u2netp", "seed": 0, "weights": "random"}


def test_labeler_plugins_import_no_heavy_library_at_parse_time():
    code = (
        "import sys, ldmprobe.labels; "
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'rembg', 'carvekit') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
