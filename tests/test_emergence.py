"""Emergence steps on constructed curves, their bootstrap against a brute-force computation,
the labeler-on-preview scores, and the probe-vs-labeler comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ldmprobe.core import metrics
from ldmprobe.reporting.emergence import comparison, emergence_table, labeler_scores


def brute_force_emergence(steps, curve, fraction, higher_is_better=True):
    """The definition, literally: the first step from which every later value meets it."""
    final = curve[-1]
    if np.isnan(final) or (higher_is_better and final <= 0):
        return None
    for i in range(len(steps)):
        later = curve[i:]
        ok = later >= fraction * final if higher_is_better else later <= final / fraction
        if np.all(ok):
            return int(steps[i])
    return None


def test_emergence_matches_the_definition_on_random_curves():
    rng = np.random.default_rng(1)
    steps = np.array([0, 2, 4, 7, 10, 14])
    for _ in range(300):
        curve = np.cumsum(rng.normal(0.1, 0.2, size=steps.size))
        for higher in (True, False):
            values = curve if higher else np.abs(curve) + 0.01
            expected = brute_force_emergence(steps, values, 0.9, higher)
            assert metrics.emergence_step(steps, values, 0.9, higher) == expected


def test_emergence_bootstrap_matches_a_loop_over_resamples():
    rng = np.random.default_rng(2)
    steps = np.arange(8)
    rise = 1 - np.exp(-np.arange(8) / rng.uniform(0.5, 3, size=(20, 1)))
    per_image = rise + rng.normal(0, 0.05, size=rise.shape)
    n_resamples, level, seed = 400, 0.9, 7
    result = metrics.emergence_step_bootstrap(
        steps, per_image, 0.9, n_resamples=n_resamples, level=level, seed=seed
    )
    # Independently: draw the same resamples, average the rows, apply the definition.
    draws = np.random.default_rng(seed).integers(0, 20, size=(n_resamples, 20))
    found = [brute_force_emergence(steps, per_image[d].mean(axis=0), 0.9) for d in draws]
    found = np.array([f for f in found if f is not None])
    low, high = np.quantile(found, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    assert result["step"] == brute_force_emergence(steps, per_image.mean(axis=0), 0.9)
    assert (result["ci_low"], result["ci_high"]) == (int(low), int(high))
    assert result["undefined_fraction"] == pytest.approx(1 - found.size / n_resamples)


def test_bootstrap_ci_matches_a_loop_over_resamples():
    values = np.random.default_rng(3).gamma(2.0, size=37)
    draws = np.random.default_rng(11).integers(0, 37, size=(500, 37))
    means = np.array([values[d].mean() for d in draws])
    expected = np.quantile(means, [0.025, 0.975])
    assert np.allclose(metrics.bootstrap_ci(values, 500, 0.95, seed=11), expected)


def per_image_rows(source, layer, metric, curves, steps):
    return [
        {
            "prompt_id": f"img{i}",
            "seed": 1,
            "task": "saliency" if metric == "dice" else "depth",
            "metric": metric,
            "value": value,
            "source": source,
            "half": "",
            "layer": layer,
            "step": step,
        }
        for i, curve in enumerate(curves)
        for step, value in zip(steps, curve, strict=True)
    ]


@pytest.fixture
def constructed():
    steps = [0, 2, 4, 7, 14]
    early = [[0.2, 0.95, 0.97, 1.0, 1.0]] * 6  # the probe: from step 2
    late = [[0.0, 0.1, 0.3, 0.5, 1.0]] * 6  # the labeler: only at the last step
    worse = [[0.2, 0.5, 0.9, 0.95, 0.9]] * 6  # a weaker layer, emerging at step 4
    rmse = [[2.0, 1.5, 1.08, 1.0, 1.0]] * 6  # lower is better: from step 4 (<= 1/0.9)
    rows = (
        per_image_rows("unet", "up3.2", "dice", early, steps)
        + per_image_rows("unet", "mid.0", "dice", worse, steps)
        + per_image_rows("labeler", "preview", "dice", late, steps)
        + per_image_rows("unet", "up3.2", "rmse", rmse, steps)
    )
    return pd.DataFrame(rows)


def test_emergence_table_on_constructed_curves(constructed):
    table = emergence_table(constructed, 0.9, n_resamples=50, level=0.95, seed=0)
    got = {
        (row.source, row.layer, row.metric): (row.step, row.ci_low, row.ci_high)
        for row in table.itertuples()
    }
    assert got == {
        ("unet", "up3.2", "dice"): (2, 2, 2),
        ("unet", "mid.0", "dice"): (4, 4, 4),
        ("labeler", "preview", "dice"): (14, 14, 14),
        ("unet", "up3.2", "rmse"): (4, 4, 4),
    }
    assert (table.n_images == 6).all()


def test_emergence_table_counts_images_not_id_seed_pairs(constructed):
    # Two ids with different seeds: a cross product of ids and seeds would invent two images.
    two = constructed[constructed.prompt_id.isin(["img0", "img1"])].copy()
    two["seed"] = two["prompt_id"].map({"img0": 1, "img1": 2})
    table = emergence_table(two, 0.9, n_resamples=20, level=0.95, seed=0)
    assert (table.n_images == 2).all() and (table.undefined_fraction == 0).all()


def test_comparison_picks_the_best_layer_and_says_so(constructed):
    table = emergence_table(constructed, 0.9, n_resamples=50, level=0.95, seed=0)
    row = comparison(table, ["saliency"]).iloc[0]
    assert row.probe_layer == "up3.2" and row.probe_step == 2 and row.labeler_step == 14
    assert "probe on up3.2 from step 2" in row.sentence
    assert "labeler on the previews from step 14" in row.sentence


def write_label(path, target, previews):
    np.savez(
        path,
        target=target.astype(np.float32),
        raw=target.astype(np.float32),
        preview_target=np.stack(previews).astype(np.float32),
        preview_raw=np.stack(previews).astype(np.float32),
    )


def test_labeler_scores_against_an_independent_computation(tmp_path):
    rng = np.random.default_rng(4)
    rows = []
    depth_maps = {}
    for i, split in enumerate(["train", "train", "test", "test"]):
        mask = rng.random((8, 8)) > 0.5
        masks = [np.zeros((8, 8)), mask & (rng.random((8, 8)) > 0.3), mask]
        write_label(tmp_path / f"s{i}.npz", mask, masks)
        depth = rng.normal(5, 2, size=(8, 8))
        previews = [depth + rng.normal(0, s, size=(8, 8)) for s in (3.0, 1.0, 0.0)]
        write_label(tmp_path / f"d{i}.npz", depth, previews)
        depth_maps[i] = (depth, previews, mask)
        rows.append(
            {
                "prompt_id": f"p{i}",
                "seed": 1,
                "split": split,
                "label_saliency": str(tmp_path / f"s{i}.npz"),
                "label_depth": str(tmp_path / f"d{i}.npz"),
            }
        )
    manifest = pd.DataFrame(rows)
    tasks = {
        "saliency": {"target_scaling": "train"},
        "depth": {"target_scaling": "fixed", "target_mean": 5.0, "target_std": 2.0},
    }
    table = labeler_scores(manifest, tasks, steps=[0, 2])
    assert set(table.prompt_id) == {"p2", "p3"}  # test images only
    assert set(table.source) == {"labeler"} and set(table.layer) == {"preview"}
    dice = table[(table.metric == "dice")].set_index(["prompt_id", "step"])["value"]
    assert dice[("p2", 2)] == 1.0 and dice[("p3", 2)] == 1.0  # the final preview is the label
    assert dice[("p2", 0)] == 0.0  # an empty preview mask
    rmse = table[(table.metric == "rmse")].set_index(["prompt_id", "step"])["value"]
    depth, previews, mask = depth_maps[3]
    expected = np.sqrt(np.mean(((previews[0] - depth) / 2.0) ** 2))
    assert rmse[("p3", 0)] == pytest.approx(expected, rel=1e-5)
    spearman = table[(table.metric == "spearman")].set_index(["prompt_id", "step"])["value"]
    from scipy.stats import spearmanr

    assert spearman[("p3", 0)] == pytest.approx(
        spearmanr(previews[0].ravel(), depth.ravel()).statistic, rel=1e-5
    )
    # Beyond position (metrics.VARIANTS): over the image's saliency foreground, and less the
    # training images' mean depth per position.
    by_metric = table[table.prompt_id == "p3"].set_index(["metric", "step"])["value"]
    from scipy.stats import pearsonr

    assert by_metric[("pearson_objects", 0)] == pytest.approx(
        pearsonr(previews[0][mask], depth[mask]).statistic, rel=1e-5
    )
    position_mean = (depth_maps[0][0] + depth_maps[1][0]) / 2
    assert by_metric[("spearman_residual", 0)] == pytest.approx(
        spearmanr((previews[0] - position_mean).ravel(), (depth - position_mean).ravel()).statistic,
        rel=1e-5,
    )
    assert not table[table.task == "saliency"].metric.str.contains("_").any()
