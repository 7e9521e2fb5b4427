"""Exact labels of the world's images. Route (a): the fit recovers rendered scenes, refuses
what is not a scene of this world, and an image it refuses is excluded from the manifest.
Route (b): an image generated from the inversion of a render is labelled, with its previews,
by that render, the scene named by the generation's record."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ldmprobe.core.tasks import TASKS
from ldmprobe.labels import build_labeler, label_image, load_label
from ldmprobe.models import ModelRef
from ldmprobe.probing.dataset import (
    EXCLUDED,
    build_manifest,
    read_manifest,
    task_split,
    usable_by_all,
)
from ldmprobe.scenes import (
    PALETTE,
    SPEC_FILE,
    Scene,
    SceneObject,
    palette_mask,
    render,
    render_dataset,
)
from ldmprobe.scenes.fit import fit_scene, label_kept, save_world_spec

SIZE = 64


@pytest.fixture(scope="module")
def renders():
    return render_dataset(seed=11, count=40, size=SIZE)


@pytest.fixture(scope="module")
def fits(renders):
    _, arrays = renders
    return [fit_scene(image) for image in arrays["image"]]


def test_fit_recovers_rendered_scenes(renders, fits):
    scenes, arrays = renders
    assert all(fit.ok for fit in fits), [fit.failure for fit in fits if not fit.ok]
    iou = np.array([fit.iou for fit in fits])
    psnr = np.array([fit.psnr for fit in fits])
    assert iou.min() > 0.75 and np.median(iou) > 0.88
    assert np.median(psnr) > 27
    shapes, lights = [], []
    for scene, fit, mask in zip(scenes, fits, arrays["mask"], strict=True):
        # The saliency label is the image's own palette mask: exact.
        np.testing.assert_array_equal(fit.mask, mask)
        assert sorted(o.colour for o in fit.scene.objects) == sorted(
            o.colour for o in scene.objects
        )
        lights.append(fit.scene.light == scene.light)
        for obj in scene.objects:
            fitted = next(o for o in fit.scene.objects if o.colour == obj.colour)
            shapes.append(fitted.shape == obj.shape)
    assert np.mean(lights) >= 0.9
    assert np.mean(shapes) >= 0.8


def test_refitted_depth_and_shading_follow_the_scene(renders, fits):
    _, arrays = renders
    depth_r = [
        np.corrcoef(fit.render.depth.ravel(), truth.ravel())[0, 1]
        for fit, truth in zip(fits, arrays["depth"], strict=True)
    ]
    shading_r = [
        np.corrcoef(fit.render.shading.ravel(), truth.ravel())[0, 1]
        for fit, truth in zip(fits, arrays["shading"], strict=True)
    ]
    assert np.median(depth_r) > 0.95 and np.median(shading_r) > 0.9


def _failure(image):
    fit = fit_scene(image)
    assert not fit.ok
    return fit.failure


def test_a_colour_drawn_twice_is_fitted_as_two_objects():
    """A model's sample may repeat a colour, which a rendered scene never does: each connected
    blob of a colour is one object, so the re-render matches what was drawn."""
    scene = Scene(
        (
            SceneObject("cube", "green", -1.2, 5.0, 0.45),
            SceneObject("sphere", "green", 1.3, 6.0, 0.5),
            SceneObject("cylinder", "blue", 0.0, 8.0, 0.4),
            SceneObject("sphere", "yellow", -2.5, 9.0, 0.5),
        ),
        "left",
        (0.0, 0.0),
    )
    drawn = render(scene, SIZE)
    fit = fit_scene(drawn.image)
    assert fit.ok, fit.failure
    assert sorted(o.colour for o in fit.scene.objects) == ["blue", "green", "green", "yellow"]
    assert fit.iou > 0.8 and fit.psnr > 25
    assert np.corrcoef(fit.render.depth.ravel(), drawn.depth.ravel())[0, 1] > 0.95


def test_fit_refuses_what_is_not_a_scene(renders):
    _, arrays = renders
    grey = np.full((SIZE, SIZE, 3), 128, np.uint8)
    assert _failure(grey).startswith("no object")
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    assert "object blobs" in _failure(noise)
    # Eight separate palette patches: more objects than a fit holds.
    many = render(Scene((), "left", (0.0, 0.0)), SIZE).image.copy()
    for k, rgb in enumerate(list(PALETTE.values())[:4]):
        many[40:46, 4 + 15 * k : 12 + 15 * k] = rgb
        many[54:60, 4 + 15 * k : 12 + 15 * k] = rgb
    assert "8 object blobs" in _failure(many)
    # A red stripe across the image is no sphere, cube or cylinder: the silhouettes miss it.
    stripe = render(Scene((), "left", (0.0, 0.0)), SIZE).image.copy()
    stripe[40:43, :] = PALETTE["red"]
    assert _failure(stripe).startswith("mask IoU")
    # The right silhouette in the wrong colours of ground and sky: the re-render misses them.
    scene = Scene((SceneObject("cube", "blue", 0.0, 4.0, 0.5),), "left", (0.0, 0.0))
    repainted = render(scene, SIZE).image.copy()
    background = ~render(scene, SIZE).mask
    repainted[background] = (20, 20, 20)
    assert _failure(repainted).startswith("PSNR")


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world") / "exact"
    save_world_spec(folder)
    return folder


def _labeler(folder, target):
    ref = ModelRef("labels.tasks.x.model", str(folder))
    return build_labeler("world", ref, "cpu", False, {"target": target})


def generated_looking_misfit(arrays) -> np.ndarray:
    """A render softened as generated images are, with a red streak no shape can make: the
    fit fails on it, its palette mask is still exact."""
    from PIL import ImageFilter

    image = Image.fromarray(arrays["image"][2]).filter(ImageFilter.GaussianBlur(0.7))
    pixels = np.asarray(image).copy()
    pixels[44:46, 2:40] = PALETTE["red"]
    return pixels


def test_world_labeler_gives_exact_maps_and_nan_for_failures(renders, spec_dir):
    _, arrays = renders
    misfit = generated_looking_misfit(arrays)
    assert not fit_scene(misfit).ok
    pixels = [arrays["image"][0], np.full((SIZE, SIZE, 3), 90, np.uint8), misfit]
    images = [Image.fromarray(image) for image in pixels]
    saliency = _labeler(spec_dir, "saliency").predict(images)
    np.testing.assert_array_equal(saliency[0], arrays["mask"][0].astype(np.float32))
    # Saliency needs no fit: the palette mask labels every image, a failed fit's too.
    for index in (1, 2):
        np.testing.assert_array_equal(saliency[index], palette_mask(pixels[index]))
    assert saliency[2].sum() > 0 and not saliency[1].any()
    depth = _labeler(spec_dir, "depth").predict(images)
    assert np.isfinite(depth[0]).all() and (depth[0] > 0).all()
    # Inverse depth: nearer (the bottom rows) is larger.
    assert depth[0][-1].mean() > depth[0][SIZE // 2].mean()
    # Depth and shading need the fit: none where it fails.
    assert np.isnan(depth[1:]).all()
    assert np.isnan(_labeler(spec_dir, "shading").predict(images[2:])).all()
    with pytest.raises(ValueError, match="option 'target'"):
        _labeler(spec_dir, None)


def test_label_kept_is_the_one_rule():
    assert label_kept("saliency", None)
    assert not label_kept("depth", None) and not label_kept("shading", None)
    no_scene = fit_scene(np.full((SIZE, SIZE, 3), 90, np.uint8))
    assert label_kept("saliency", no_scene) and not label_kept("depth", no_scene)


def test_world_labeler_refuses_another_worlds_definition(tmp_path, spec_dir):
    spec = json.loads((spec_dir / SPEC_FILE).read_text())
    spec["ambient"] = 0.5
    (tmp_path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="another world"):
        _labeler(tmp_path, "depth")


def test_an_image_without_label_is_excluded_from_the_manifest(tmp_path, renders, spec_dir):
    _, arrays = renders
    images = {"good": arrays["image"][1], "bad": generated_looking_misfit(arrays)}
    paths = collections.defaultdict(list)
    for name, pixels in images.items():
        image = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(image)
        # Its one preview: the good image's shows no scene yet (NaN), the bad one's does.
        preview = tmp_path / f"{name}-preview.png"
        Image.fromarray(images["bad" if name == "good" else "good"]).save(preview)
        paths["image"].append(str(image))
        for task in ("saliency", "depth"):
            out = tmp_path / f"{name}-{task}.npz"
            labeler = _labeler(spec_dir, task)
            label_image(labeler, TASKS[task], {}, image, [preview], out, {"model": "x"})
            paths[TASKS[task].label_key].append(str(out))
    good = load_label(tmp_path / "good-depth.npz")
    assert np.isnan(good["preview_target"][0]).all() and not np.isnan(good["target"]).any()
    # The failed fit's image keeps its exact saliency label; only depth excludes it.
    bad = load_label(tmp_path / "bad-saliency.npz")
    np.testing.assert_array_equal(bad["target"], palette_mask(images["bad"]))
    prompts = pd.DataFrame({"prompt_id": ["good", "bad"], "seed": [1, 2], "split": ["train"] * 2})
    manifest = build_manifest(prompts, dict(paths), str(tmp_path / "dataset.csv"))
    again = read_manifest(str(tmp_path / "dataset.csv"))
    assert again["excluded_by"].tolist() == ["", "depth"]
    # The image keeps its split: it is left out of depth alone.
    assert manifest["split"].tolist() == again["split"].tolist() == ["train", "train"]
    assert task_split(again, "depth").tolist() == ["train", EXCLUDED]
    assert task_split(again, "saliency").tolist() == ["train", "train"]
    assert usable_by_all(again).tolist() == [True, False]


def test_fit_holds_on_blurred_renders(renders):
    """Generated images are softer than renders: a blur of one pixel keeps most fits, with the
    right number of objects."""
    from PIL import ImageFilter

    scenes, arrays = renders
    blurred = [
        np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)))
        for image in arrays["image"]
    ]
    fits = [fit_scene(image) for image in blurred]
    assert np.mean([fit.ok for fit in fits]) >= 0.85
    assert all(
        len(fit.scene.objects) == len(scene.objects)
        for fit, scene in zip(fits, scenes, strict=True)
        if fit.ok
    )


def test_fit_faithfulness_table_counts_what_each_task_keeps(tmp_path, renders, spec_dir):
    from ldmprobe.world.quality import fit_faithfulness

    _, arrays = renders
    pixels = [
        *arrays["image"][:3],
        np.full((SIZE, SIZE, 3), 90, np.uint8),
        generated_looking_misfit(arrays),
    ]
    images = []
    for index, image in enumerate(pixels):
        path = tmp_path / f"{index}.png"
        Image.fromarray(image).save(path)
        images.append({"prompt_id": f"p{index}", "seed": index, "path": str(path)})
    strict = {"target": "depth", "min_iou": 1.01}  # no re-render matches the image this well
    thresholds = {"saliency": {"target": "saliency"}, "depth": {"target": "depth"}}
    table, summary = fit_faithfulness(images, thresholds)
    # Saliency needs no fit: every image keeps it; depth drops the two failed fits.
    assert table["kept_saliency"].all()
    assert table["kept_depth"].tolist() == [True, True, True, False, False]
    assert table["failure"].iloc[3].startswith("no object") and np.isnan(table["psnr"].iloc[3])
    counts = summary.set_index("metric")["mean"]
    assert counts["excluded_saliency"] == 0 and counts["excluded_depth"] == 2
    assert counts["kept_saliency"] == 1.0 and counts["kept_depth"] == 0.6
    assert summary.set_index("metric").loc["mask_iou", "n"] == 4
    # The table keeps what the labeler labels, image by image.
    for task in thresholds:
        maps = _labeler(spec_dir, task).predict([Image.fromarray(image) for image in pixels])
        labelled = [not np.isnan(m).all() for m in maps]
        assert table[f"kept_{task}"].tolist() == labelled
    table, summary = fit_faithfulness(images, {"depth": strict})
    assert not table["kept_depth"].any()
    assert summary.set_index("metric")["mean"]["excluded_depth"] == 5


def test_label_job_takes_the_previews_labels_from_the_previews_labeler(tmp_path, renders, spec_dir):
    """As config/world.yaml has it: the final image's exact label (`world`), its previews'
    from the world's off-the-shelf labeler (`world-net`), each recorded in the provenance."""
    from workflow import REPO

    from ldmprobe import jobs
    from ldmprobe.labels import load_provenance

    net = REPO / "world" / "weights" / "labeler"
    if not net.is_dir():
        pytest.skip(f"{net} is not committed")
    _, arrays = renders
    image = tmp_path / "image.png"
    Image.fromarray(arrays["image"][3]).save(image)
    (tmp_path / "previews" / "x0").mkdir(parents=True)
    # Noisy previews: no exact fit holds on them, the net labels them all the same.
    rng = np.random.default_rng(0)
    previews = []
    for step in range(3):
        noisy = arrays["image"][3] + rng.normal(0, 40 * (3 - step), arrays["image"][3].shape)
        previews.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
        previews[-1].save(tmp_path / "previews" / "x0" / f"step{step:03d}.png")
    section = {
        "labeler": "world",
        "model": {"id": str(spec_dir)},
        "options": {"target": "depth"},
        "previews": {
            "labeler": "world-net",
            "model": {"id": str(net)},
            "options": {"target": "depth"},
        },
    }
    out = tmp_path / "label.npz"
    paths = [{"image": str(image), "previews": str(tmp_path / "previews"), "out": str(out)}]
    jobs.label("depth", section, False, "cpu", 2, paths)
    label = load_label(out)
    exact = _labeler(spec_dir, "depth")
    np.testing.assert_array_equal(label["raw"], exact.predict([Image.open(image)])[0])
    assert np.isfinite(label["target"]).all()
    assert np.isnan(exact.predict(previews[:1])).all()  # exact fitting fails on a noisy preview
    ref = ModelRef("labels.tasks.depth.previews.model", str(net))
    expected = build_labeler("world-net", ref, "cpu", False, {"target": "depth"}).predict(previews)
    # The job labels the previews in batches of 2: float32 sums in another order.
    assert np.isfinite(label["preview_raw"]).all()
    np.testing.assert_allclose(label["preview_raw"], expected, atol=1e-5)
    np.testing.assert_array_equal(label["preview_target"], label["preview_raw"])
    provenance = load_provenance(out)
    assert provenance["labeler"] == "world" and provenance["model"] == str(spec_dir)
    assert not provenance["excluded"]
    made = provenance["previews"]
    assert made["labeler"] == "world-net" and made["model"] == str(net)
    assert made["labeler_info"]["options"]["target"] == "depth"
    # Unset, the task's labeler labels the previews too, and the provenance has no `previews`.
    del section["previews"]
    jobs.label("depth", section, False, "cpu", 2, paths)
    assert np.isnan(load_label(out)["preview_raw"][0]).all()
    assert "previews" not in load_provenance(out)


# Route (b): scene 3 of data seed 1 (config/world_prompts.csv's row scene0003), generated from
# the inversion of its render; the `world` labeler with scene: render labels it from the record.
START = {"kind": "world-inversion", "data_seed": 1}
ROW = ("scene0003", 3)


def _route_b_scene():
    from ldmprobe.scenes import sample_scene, scene_rng

    return sample_scene(scene_rng(START["data_seed"], ROW[1]))


@pytest.fixture(scope="module")
def route_b(tmp_path_factory, demo_models):
    """Two generations by the demo pipeline (random weights, DDIM, 64 px, 3 steps) of row
    scene0003: one started from the inversion of its render, one from Gaussian noise."""
    from ldmprobe.generation.generate import GenerationSettings, generate
    from ldmprobe.models import load_diffusion_pipeline
    from ldmprobe.scenes import caption

    ref = ModelRef("models.diffusion", str(demo_models / "stable-diffusion"))
    pipe = load_diffusion_pipeline(ref, "ddim", "float32", "cpu")
    root = tmp_path_factory.mktemp("route-b")
    folders = {}
    for name, start in (("inverted", START), ("noise", None)):
        settings = GenerationSettings(
            height=SIZE,
            width=SIZE,
            steps=3,
            guidance_scale=1.0,
            halves=(),
            codec={"name": "none"},
            start=start,
        )
        folder = root / name
        paths = [folder / p for p in ("image.png", "previews", "store.zarr", "meta.json")]
        generate(pipe, caption(_route_b_scene()), ROW[1], settings, *paths, {"model": "demo"})
        folders[name] = folder
    return folders


def _render_section(spec_dir, task, **options):
    return {
        "labeler": "world",
        "model": {"id": str(spec_dir)},
        "options": {"target": task, "scene": "render", **options},
    }


def _label_job(task, section, folder, out, meta=True):
    from ldmprobe import jobs

    entry = {
        "prompt_id": ROW[0],
        "seed": ROW[1],
        "image": str(folder / "image.png"),
        "previews": str(folder / "previews"),
        "out": str(out),
    }
    if meta:
        entry["meta"] = str(folder / "meta.json")
    jobs.label(task, section, False, "cpu", 2, [entry])
    return load_label(out)


def test_the_generation_records_its_start(route_b):
    inverted = json.loads((route_b["inverted"] / "meta.json").read_text())
    assert inverted["start"] == START
    # Gaussian noise: the record is as before, with no start.
    assert "start" not in json.loads((route_b["noise"] / "meta.json").read_text())


@pytest.mark.parametrize("task", ["saliency", "depth", "shading"])
def test_render_labels_the_final_image_and_every_preview(tmp_path, route_b, spec_dir, task):
    """Route (b): the label of the image and of each step's preview is the render of the scene
    the generation started from, exactly, whatever was drawn (random weights here)."""
    from ldmprobe.labels import load_provenance

    truth = render(_route_b_scene(), SIZE)
    expected = {
        "saliency": truth.mask.astype(np.float32),
        "depth": (1.0 / truth.depth).astype(np.float32),  # inverse depth, 1/m, as route (a)
        "shading": truth.shading,
    }[task]
    out = tmp_path / "label.npz"
    label = _label_job(task, _render_section(spec_dir, task), route_b["inverted"], out)
    assert label["raw"].dtype == np.float32
    np.testing.assert_array_equal(label["raw"], expected)
    assert label["preview_raw"].shape == (3, SIZE, SIZE)
    for preview in label["preview_raw"]:
        np.testing.assert_array_equal(preview, expected)
    target = truth.mask.astype(np.float32) if task == "saliency" else expected
    np.testing.assert_array_equal(label["target"], target)
    np.testing.assert_array_equal(label["preview_target"], np.stack([target] * 3))
    provenance = load_provenance(out)
    assert not provenance["excluded"]  # nothing is excluded
    assert provenance["labeler_info"]["options"]["scene"] == "render"
    # The fit, route (a), labels what was drawn: random weights draw no scene of this world.
    fitted = _labeler(spec_dir, task).predict([Image.open(route_b["inverted"] / "image.png")])
    assert not np.array_equal(fitted[0], expected)


def test_render_refuses_a_row_whose_prompt_is_not_the_scenes_caption(tmp_path, route_b, spec_dir):
    from ldmprobe.scenes import caption, sample_scene, scene_rng

    folder = tmp_path / "gen"
    shutil.copytree(route_b["inverted"], folder)
    meta = json.loads((folder / "meta.json").read_text())
    other = caption(sample_scene(scene_rng(1, 4)))
    assert other != meta["prompt"]
    (folder / "meta.json").write_text(json.dumps({**meta, "prompt": other}))
    section = _render_section(spec_dir, "depth")
    with pytest.raises(
        ValueError,
        match=r"row scene0003 \(seed 3\).*: the prompt .* is not the caption of scene 3 of data "
        r"seed 1",
    ):
        _label_job("depth", section, folder, tmp_path / "label.npz")
    # An image generated from noise has no scene to render, nor has a job without the record.
    with pytest.raises(ValueError, match=r"row scene0003 \(seed 3\).*started from 'noise'"):
        _label_job("depth", section, route_b["noise"], tmp_path / "label.npz")
    with pytest.raises(ValueError, match="needs the generation's record"):
        _label_job("depth", section, route_b["inverted"], tmp_path / "label.npz", meta=False)
    assert not (tmp_path / "label.npz").exists()
    with pytest.raises(ValueError, match="option 'scene' is one of"):
        _label_job("depth", _render_section(spec_dir, "depth", scene="exact"), folder, "x.npz")


def test_regeneration_fidelity_scores_the_redrawn_image_against_its_render(tmp_path, route_b):
    """Route (b)'s fidelity: the image against the render it was inverted from. The render
    itself scores exactly; the demo's random weights redraw no scene of this world; an image
    generated from noise has no render and is refused, naming its record."""
    from ldmprobe.world.quality import regeneration_fidelity

    exact = tmp_path / "exact"
    shutil.copytree(route_b["inverted"], exact)
    Image.fromarray(render(_route_b_scene(), SIZE).image).save(exact / "image.png")

    def image(folder, prompt_id):
        return {
            "prompt_id": prompt_id,
            "seed": ROW[1],
            "path": str(folder / "image.png"),
            "meta": str(folder / "meta.json"),
        }

    table, summary = regeneration_fidelity([image(exact, "exact"), image(route_b["inverted"], "b")])
    scores = table.set_index("prompt_id")
    assert scores.loc["exact", "psnr"] == np.inf and scores.loc["exact", "mask_iou"] == 1.0
    assert scores.loc["b", "psnr"] < 20 and scores.loc["b", "mask_iou"] < 0.5
    assert summary.set_index("metric").loc["mask_iou", "n"] == 2
    with pytest.raises(ValueError, match=r"noise.*meta.json.*not from 'noise'"):
        regeneration_fidelity([image(route_b["noise"], "noise")])


def test_fit_is_the_default_and_ignores_the_record(tmp_path, renders, spec_dir):
    """scene: fit (the default) labels the pixels, route (a), as before: the same maps with or
    without the generation's record, and with the option spelled out."""
    _, arrays = renders
    folder = tmp_path / "gen"
    (folder / "previews" / "x0").mkdir(parents=True)
    Image.fromarray(arrays["image"][5]).save(folder / "image.png")
    Image.fromarray(arrays["image"][6]).save(folder / "previews" / "x0" / "step000.png")
    Image.fromarray(generated_looking_misfit(arrays)).save(folder / "previews/x0/step001.png")
    (folder / "meta.json").write_text(json.dumps({"prompt": "x", "seed": 3, "start": START}))
    exact = _labeler(spec_dir, "depth")
    assert exact.settings["scene"] == "fit"
    images = [Image.open(folder / "image.png")]
    images += [Image.open(p) for p in sorted((folder / "previews" / "x0").glob("*.png"))]
    expected = exact.predict(images)
    assert np.isnan(expected[2]).all() and np.isfinite(expected[:2]).all()
    section = {"labeler": "world", "model": {"id": str(spec_dir)}, "options": {"target": "depth"}}
    plain = _label_job("depth", section, folder, tmp_path / "plain.npz", meta=False)
    with_record = _label_job("depth", section, folder, tmp_path / "record.npz")
    section["options"]["scene"] = "fit"
    spelled = _label_job("depth", section, folder, tmp_path / "spelled.npz")
    np.testing.assert_array_equal(plain["raw"], expected[0])
    np.testing.assert_array_equal(plain["preview_raw"], expected[1:])
    for label in (with_record, spelled):
        for key in plain:
            np.testing.assert_array_equal(label[key], plain[key])


def test_which_label_jobs_read_the_record():
    from ldmprobe.labels import task_reads_record

    render_section = {"labeler": "world", "model": {"id": "x"}, "options": {"target": "depth"}}
    assert not task_reads_record("depth", render_section)
    render_section["options"]["scene"] = "render"
    assert task_reads_record("depth", render_section)
    # A previews labeler that reads it makes the job read it too.
    fitted = {
        "labeler": "world",
        "model": {"id": "x"},
        "options": {"target": "depth"},
        "previews": render_section,
    }
    assert task_reads_record("depth", fitted)
    assert not task_reads_record("depth", {"labeler": "dpt", "model": {"id": "x"}})
