"""The grid ceiling (ldmprobe.core.metrics.grid_ceiling, ldmprobe.reporting.ceiling): the best
score a probe on a token grid can reach when its output is nearest-upsampled to the label."""

import itertools

import numpy as np
import pandas as pd
import pytest

from ldmprobe.core import metrics
from ldmprobe.reporting.ceiling import ceiling_table, grids


def block_masks(shape: tuple[int, int], factor: int):
    """Every block-constant mask of a label of ``shape``."""
    h, w = shape[0] // factor, shape[1] // factor
    for bits in itertools.product([False, True], repeat=h * w):
        yield metrics.upsample_nearest(np.array(bits).reshape(h, w), shape)


@pytest.mark.parametrize("seed", range(6))
def test_best_block_dice_is_the_maximum_over_every_block_mask(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((6, 6)) < rng.uniform(0.1, 0.7)
    brute = max(metrics.dice(mask, truth) for mask in block_masks(truth.shape, 2))
    assert metrics.best_block_dice(truth, 2) == pytest.approx(brute)


def test_a_label_drawn_on_the_grid_has_a_ceiling_of_one():
    rng = np.random.default_rng(0)
    coarse = rng.random((4, 4))
    target = metrics.upsample_nearest(coarse, (16, 16))
    foreground = metrics.upsample_nearest(coarse > 0.3, (16, 16))
    assert metrics.grid_ceiling("binary", target > 0.5, 4) == {"dice": 1.0}
    scores = metrics.grid_ceiling("continuous", target, 4, foreground)
    for name in ("spearman", "pearson", "spearman_objects", "pearson_objects"):
        assert scores[name] == pytest.approx(1.0)
    assert scores["rmse"] == pytest.approx(0.0) and scores["rmse_objects"] == pytest.approx(0.0)
    assert metrics.best_block_dice(np.zeros((8, 8), bool), 4) == 1.0  # dice()'s empty convention


def test_no_block_constant_map_beats_the_block_means_in_pearson_or_rmse():
    rng = np.random.default_rng(1)
    target = rng.random((16, 16)) + np.linspace(0, 2, 16)[:, None]
    foreground = rng.random((16, 16)) < 0.4
    ceiling = metrics.grid_ceiling("continuous", target, 4, foreground)
    assert ceiling["pearson"] < 1.0
    for _ in range(200):
        rival = metrics.upsample_nearest(rng.random((4, 4)), (16, 16)) + target.mean()
        scores = metrics.image_metrics("continuous", rival, target, foreground)
        assert scores["pearson"] <= ceiling["pearson"] + 1e-12
        assert scores["pearson_objects"] <= ceiling["pearson_objects"] + 1e-12
        assert scores["rmse"] >= ceiling["rmse"] - 1e-12
        assert scores["rmse_objects"] >= ceiling["rmse_objects"] - 1e-12


def write_label(path, target):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, target=target.astype(np.float32))
    return str(path)


def test_the_table_scores_each_tasks_test_images_at_each_grid(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for number, split in enumerate(["test", "test", "test", "train"]):
        mask = np.zeros((8, 8), np.float32)
        mask[1 : 3 + number, 2:5] = 1.0
        depth = rng.random((8, 8))
        rows.append(
            {
                "prompt_id": f"p{number}",
                "seed": 0,
                "split": split,
                "label_saliency": write_label(tmp_path / f"s{number}.npz", mask),
                "label_depth": write_label(tmp_path / f"d{number}.npz", depth),
                # The third test image has no depth label: it counts for saliency only.
                "excluded_by": "depth" if number == 2 else "",
            }
        )
    manifest = pd.DataFrame(rows)
    layers = [
        {"name": "a", "order": 0, "height": 4, "width": 4},
        {"name": "b", "order": 1, "height": 2, "width": 2},
        {"name": "c", "order": 2, "height": 4, "width": 4},
    ]
    assert grids(layers) == {(4, 4): ["a", "c"], (2, 2): ["b"]}
    config = {"bootstrap_resamples": 50, "ci_level": 0.95, "seed": 0}
    table = ceiling_table(manifest, layers, ["saliency", "depth"], config)
    saliency = table[table.task == "saliency"].set_index("grid")
    assert (saliency.n == 3).all() and saliency.loc["4x4", "layers"] == "a c"
    expected = np.mean(
        [
            metrics.best_block_dice(np.load(rows[i]["label_saliency"])["target"] > 0.5, 2)
            for i in range(3)
        ]
    )
    assert saliency.loc["4x4", "mean"] == pytest.approx(expected)
    assert saliency.loc["4x4", "mean"] >= saliency.loc["2x2", "mean"]
    depth = table[table.task == "depth"]
    assert set(depth.metric) == {
        "spearman", "pearson", "rmse", "spearman_objects", "pearson_objects", "rmse_objects",
    }  # fmt: skip
    assert (depth.n == 2).all()
