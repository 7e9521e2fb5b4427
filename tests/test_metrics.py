"""Metrics against independent implementations (scipy, explicit loops, hand counts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import dice as scipy_dice_dissimilarity
from scipy.stats import pearsonr, spearmanr

from ldmprobe.core.metrics import (
    bootstrap_ci,
    dice,
    emergence_step,
    emergence_step_bootstrap,
    image_metrics,
    iou,
    pearson,
    rmse,
    spearman,
    summarise,
    upsample_nearest,
)


def _with_nans(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    values = values.astype(np.float64).copy()
    values[rng.random(values.shape) < share] = np.nan
    return values


def _scipy_pairwise(fn, pred: np.ndarray, target: np.ndarray) -> float:
    keep = ~(np.isnan(pred) | np.isnan(target))
    return fn(pred[keep], target[keep])[0]


# --- correlations and errors ---------------------------------------------------------------


def test_spearman_and_pearson_match_scipy_with_nans_dropped_pairwise():
    rng = np.random.default_rng(1)
    pred = _with_nans(rng, rng.normal(size=(24, 24)), 0.1)
    target = _with_nans(rng, pred * 0.5 + rng.normal(size=(24, 24)), 0.1)
    assert np.isnan(pred).any() and np.isnan(target).any()
    assert spearman(pred, target) == pytest.approx(_scipy_pairwise(spearmanr, pred, target), 1e-12)
    assert pearson(pred, target) == pytest.approx(_scipy_pairwise(pearsonr, pred, target), 1e-12)


def test_spearman_matches_scipy_under_heavy_ties():
    rng = np.random.default_rng(2)
    # Blocky predictions (each token repeated over 4x4 pixels) against integer-valued targets.
    pred = upsample_nearest(rng.normal(size=(6, 6)).astype(np.float32), (24, 24))
    target = rng.integers(0, 4, size=(24, 24))
    expected = spearmanr(pred.ravel(), target.ravel())[0]
    assert spearman(pred, target) == pytest.approx(expected, abs=1e-12)
    assert pearson(pred, target) == pytest.approx(pearsonr(pred.ravel(), target.ravel())[0], 1e-6)


def test_correlations_exact_values():
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == 1.0
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0
    # Monotone but non-linear: rank correlation is exactly 1.
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, np.exp(x)) == 1.0
    assert pearson(x, np.exp(x)) < 1.0


def test_correlations_of_constant_input_are_nan():
    x = np.array([1.0, 2.0, 3.0])
    constant = np.full(3, 0.1)
    for fn in (spearman, pearson):
        assert math.isnan(fn(x, constant))
        assert math.isnan(fn(constant, x))
        assert math.isnan(fn(np.array([1.0]), np.array([2.0])))
    # Constant once the NaN pair is dropped.
    assert math.isnan(spearman(np.array([1.0, 1.0, 5.0]), np.array([0.0, 2.0, np.nan])))


def test_rmse_matches_direct_formula_and_drops_nans():
    rng = np.random.default_rng(3)
    pred = _with_nans(rng, rng.normal(size=(10, 10)), 0.2)
    target = rng.normal(size=(10, 10)).astype(np.float32)
    keep = ~np.isnan(pred)
    expected = math.sqrt(
        sum((p - float(t)) ** 2 for p, t in zip(pred[keep], target[keep], strict=True)) / keep.sum()
    )
    assert rmse(pred, target) == pytest.approx(expected, 1e-12)
    assert rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == math.sqrt(12.5)
    assert rmse(np.array([1.0, np.nan, 3.0]), np.array([1.0, 5.0, np.nan])) == 0.0
    assert math.isnan(rmse(np.array([np.nan]), np.array([1.0])))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        pearson(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 2\)"):
        rmse(np.zeros(4), np.zeros((2, 2)))


# --- dice ----------------------------------------------------------------------------------


def test_dice_hand_count():
    pred = np.array([[True, True], [False, False]])
    true = np.array([[True, False], [True, False]])
    assert dice(pred, true) == 0.5  # 2 * 1 / (2 + 2)
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0
    assert dice(np.array([True, True, True]), np.array([True, False, False])) == 0.5


def test_dice_matches_scipy():
    rng = np.random.default_rng(4)
    for share in (0.1, 0.5, 0.9):
        pred = rng.random(200) < share
        true = rng.random(200) < 0.4
        assert dice(pred, true) == pytest.approx(1.0 - scipy_dice_dissimilarity(pred, true), 1e-12)


def test_dice_empty_masks():
    empty = np.zeros((3, 3), dtype=bool)
    assert dice(empty, empty) == 1.0
    one = empty.copy()
    one[1, 1] = True
    assert dice(empty, one) == 0.0
    assert dice(one, empty) == 0.0


def test_dice_refuses_non_boolean_masks():
    with pytest.raises(TypeError):
        dice(np.array([0.2, 0.9]), np.array([True, False]))


def test_iou_hand_count_and_dice_relation():
    a = np.zeros((4, 4), dtype=bool)
    b = a.copy()
    a[0, :3] = True  # 3 pixels
    b[0, 1:] = True  # 3 pixels, 2 shared, union 4
    assert iou(a, b) == 0.5
    assert iou(a, a) == 1.0
    assert iou(a, ~a) == 0.0
    assert iou(a, b) == pytest.approx(dice(a, b) / (2 - dice(a, b)))
    empty = np.zeros((3, 3), dtype=bool)
    assert iou(empty, empty) == 1.0  # as dice
    with pytest.raises(ValueError, match="shapes differ"):
        iou(a, empty)


# --- image_metrics -------------------------------------------------------------------------


def test_image_metrics_by_task_kind():
    mask = np.array([[True, False], [False, False]])
    assert image_metrics("binary", mask, mask) == {"dice": 1.0}
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.array([[2.0, 4.0], [6.0, 10.0]])
    result = image_metrics("continuous", pred, target)
    assert set(result) == {"spearman", "pearson", "rmse"}
    assert result["spearman"] == 1.0
    assert result["pearson"] == 1.0
    assert result["rmse"] == pytest.approx(math.sqrt((1 + 4 + 9 + 25) / 4))


def test_image_metrics_rejects_mismatched_shapes_and_unknown_kind():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4, 4\)"):
        image_metrics("binary", np.zeros((2, 2), bool), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4, 4\)"):
        image_metrics("continuous", np.zeros((2, 2)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="unknown task kind"):
        image_metrics("depth", np.zeros((2, 2)), np.zeros((2, 2)))


# --- beyond position: object regions and the residual ---------------------------------------

# Depth that is the image row (a fixed camera's ground plane), with objects whose own depths
# the row does not predict.
ROWS = np.repeat(np.arange(8.0)[:, None], 8, axis=1)
OBJECTS = np.zeros((8, 8), bool)
OBJECTS[2:5, 3:6] = True


def test_object_regions_score_only_the_foreground():
    target, pred = ROWS.copy(), ROWS.copy()
    target[OBJECTS] = 10.0 + np.arange(9)
    pred[OBJECTS] = 100.0 - np.arange(9)  # every object pixel in the reverse order
    result = image_metrics("continuous", pred, target, foreground=OBJECTS)
    assert result["spearman"] > 0.5  # the ground plane makes the whole image look right
    assert result["spearman_objects"] == pytest.approx(-1.0)
    assert result["pearson_objects"] == pytest.approx(-1.0)
    expected = math.sqrt(np.mean((90.0 - 2 * np.arange(9)) ** 2))
    assert result["rmse_objects"] == pytest.approx(expected)
    empty = image_metrics("continuous", pred, target, foreground=np.zeros((8, 8), bool))
    assert all(math.isnan(empty[f"{name}_objects"]) for name in ("spearman", "pearson", "rmse"))


def test_residual_removes_what_position_predicts():
    signal = np.random.default_rng(0).normal(size=(8, 8)) * 0.1
    target = ROWS + signal
    reversed_signal = image_metrics("continuous", ROWS - signal, target, position_mean=ROWS)
    assert reversed_signal["pearson"] > 0.99  # position alone explains the whole image
    assert reversed_signal["pearson_residual"] == pytest.approx(-1.0)
    assert reversed_signal["spearman_residual"] == pytest.approx(-1.0)
    doubled = image_metrics("continuous", ROWS + 2 * signal, target, position_mean=ROWS)
    assert doubled["pearson_residual"] == pytest.approx(1.0)
    assert doubled["spearman_residual"] == pytest.approx(1.0)
    # The training mean per position predicts no residual: constant, so undefined.
    baseline = image_metrics("continuous", ROWS, target, position_mean=ROWS)
    assert math.isnan(baseline["pearson_residual"]) and "rmse_residual" not in baseline


def test_variants_are_declared_once_with_their_direction():
    from ldmprobe.core.metrics import METRICS_OF_KIND, VARIANTS, lower_is_better

    both = image_metrics("continuous", ROWS, ROWS + 1, foreground=OBJECTS, position_mean=ROWS)
    declared = [*METRICS_OF_KIND["continuous"]] + [
        f"{name}_{variant}" for variant, names in VARIANTS.items() for name in names
    ]
    assert list(both) == declared
    assert set(image_metrics("binary", OBJECTS, OBJECTS)) == set(METRICS_OF_KIND["binary"])
    assert [lower_is_better(name) for name in ("rmse", "rmse_objects", "pearson_residual")] == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(8, 8\)"):
        image_metrics("continuous", ROWS, ROWS, foreground=np.zeros((2, 2), bool))


# --- upsampling ----------------------------------------------------------------------------


def test_upsample_nearest_matches_explicit_loops():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out = upsample_nearest(arr, (6, 12))
    expected = np.empty((2, 6, 12), dtype=arr.dtype)
    for c in range(2):
        for i in range(6):
            for j in range(12):
                expected[c, i, j] = arr[c, i // 2, j // 3]
    assert out.shape == (2, 6, 12)
    np.testing.assert_array_equal(out, expected)


def test_upsample_nearest_keeps_dtype_and_identity():
    mask = np.array([[True, False], [False, True]])
    up = upsample_nearest(mask, (4, 4))
    assert up.dtype == np.bool_
    assert up.sum() == 8
    np.testing.assert_array_equal(upsample_nearest(mask, (2, 2)), mask)


@pytest.mark.parametrize("out_hw", [(5, 8), (6, 7), (2, 4), (0, 0)])
def test_upsample_nearest_rejects_non_integer_factors(out_hw):
    with pytest.raises(ValueError, match="integer multiple"):
        upsample_nearest(np.zeros((3, 4)), out_hw)


# --- bootstrap -----------------------------------------------------------------------------


def _reference_bootstrap_ci(values, n_resamples, level, seed):
    """Loop version drawing the same indices row by row."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        picks = rng.integers(0, len(values), size=len(values))
        means.append(sum(values[i] for i in picks) / len(values))
    alpha = (1 - level) / 2
    return tuple(np.quantile(means, [alpha, 1 - alpha]))


def test_bootstrap_ci_matches_loop_reference():
    values = np.random.default_rng(5).exponential(size=37)
    low, high = bootstrap_ci(values, n_resamples=300, level=0.9, seed=7)
    ref_low, ref_high = _reference_bootstrap_ci(values, 300, 0.9, 7)
    assert low == pytest.approx(ref_low, 1e-12)
    assert high == pytest.approx(ref_high, 1e-12)


def test_bootstrap_ci_is_deterministic_and_contains_the_mean():
    values = np.random.default_rng(6).normal(size=50)
    first = bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) == first
    assert bootstrap_ci(values, seed=4) != first
    assert first[0] < values.mean() < first[1]


def test_bootstrap_ci_narrows_with_more_data():
    rng = np.random.default_rng(8)
    small = bootstrap_ci(rng.normal(size=20))
    large = bootstrap_ci(rng.normal(size=2000))
    assert (large[1] - large[0]) < (small[1] - small[0]) / 4


def test_bootstrap_ci_edge_cases_and_nans():
    assert bootstrap_ci(np.array([2.5])) == (2.5, 2.5)
    assert bootstrap_ci(np.array([np.nan, 2.5, np.nan])) == (2.5, 2.5)
    low, high = bootstrap_ci(np.array([]))
    assert math.isnan(low) and math.isnan(high)
    values = np.random.default_rng(9).normal(size=30)
    with_nans = np.insert(values, [0, 10, 30], np.nan)
    assert bootstrap_ci(with_nans, seed=1) == bootstrap_ci(values, seed=1)
    with pytest.raises(ValueError):
        bootstrap_ci(values, level=1.0)


def test_summarise():
    values = np.array([1.0, np.nan, 2.0, 6.0])
    result = summarise(values, n_resamples=200, seed=2)
    assert result["mean"] == 3.0
    assert result["n"] == 3
    assert (result["ci_low"], result["ci_high"]) == bootstrap_ci(values, 200, seed=2)
    empty = summarise(np.array([np.nan]))
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["ci_low"])


# --- emergence -----------------------------------------------------------------------------

STEPS = [0, 10, 20, 30, 40]


def test_emergence_monotone_rise():
    assert emergence_step(STEPS, [0.0, 0.5, 0.85, 0.95, 1.0]) == 30
    # The threshold itself counts as reached (0.9 * 1.0 == 0.9).
    assert emergence_step(STEPS, [0.0, 0.5, 0.9, 0.95, 1.0]) == 20
    # Already there from the start.
    assert emergence_step(STEPS, [0.95, 0.96, 0.97, 0.99, 1.0]) == 0
    # Only the final step qualifies.
    assert emergence_step(STEPS, [0.0, 0.1, 0.2, 0.3, 1.0]) == 40


def test_emergence_dip_after_crossing_resets():
    assert emergence_step(STEPS, [0.0, 0.95, 0.5, 0.95, 1.0]) == 30
    assert emergence_step(STEPS, [0.92, 0.95, 0.97, 0.8, 1.0]) == 40


def test_emergence_lower_is_better():
    # Final RMSE 1.0; threshold 1 / 0.9 = 1.111...
    rmse_curve = [2.0, 1.5, 1.05, 1.2, 1.0]
    assert emergence_step(STEPS, rmse_curve, higher_is_better=False) == 40
    assert emergence_step(STEPS, [2.0, 1.5, 1.05, 1.1, 1.0], higher_is_better=False) == 20
    assert emergence_step(STEPS, [0.5, 0.2, 0.1, 0.0, 0.0], higher_is_better=False) == 30
    # Read as higher-is-better the same curve emerges at once.
    assert emergence_step(STEPS, [2.0, 1.5, 1.05, 1.1, 1.0]) == 0


def test_emergence_without_signal_is_none():
    assert emergence_step(STEPS, [0.1, 0.2, 0.3, 0.1, 0.0]) is None
    assert emergence_step(STEPS, [0.1, 0.2, 0.3, 0.1, -0.2]) is None
    assert emergence_step(STEPS, [0.1, 0.2, 0.3, 0.1, np.nan]) is None
    assert emergence_step([], []) is None


def test_emergence_nan_values_do_not_meet_the_threshold():
    assert emergence_step(STEPS, [0.0, np.nan, 0.95, 0.96, 1.0]) == 20
    assert emergence_step(STEPS, [0.95, 0.96, np.nan, 0.97, 1.0]) == 30
    assert emergence_step(STEPS, [np.nan, 1.1, 1.0, 1.0, 1.0], higher_is_better=False) == 10


def test_emergence_fraction_parameter():
    curve = [0.0, 0.6, 0.8, 0.95, 1.0]
    assert emergence_step(STEPS, curve, fraction=0.5) == 10
    assert emergence_step(STEPS, curve, fraction=0.75) == 20
    assert emergence_step(STEPS, curve, fraction=0.9) == 30
    assert emergence_step(STEPS, curve, fraction=1.0) == 40
    assert emergence_step(STEPS, [0.0, 1.0, 1.0, 1.0, 1.0], fraction=1.0) == 10
    with pytest.raises(ValueError):
        emergence_step(STEPS, curve, fraction=0.0)


def test_emergence_rejects_bad_steps():
    with pytest.raises(ValueError, match="ascending"):
        emergence_step([0, 20, 10], [0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="one value per step"):
        emergence_step([0, 10], [0.0, 1.0, 1.0])


def test_emergence_bootstrap_all_images_emerge_at_step_3():
    rng = np.random.default_rng(10)
    shape = np.array([0.0, 0.2, 0.5, 0.95, 1.0, 1.0])
    scales = rng.uniform(0.5, 2.0, size=(40, 1))
    per_image = scales * shape + rng.uniform(-0.01, 0.01, size=(40, 6))
    per_image[:, :3] = np.minimum(per_image[:, :3], 0.6 * scales)
    per_image[:, 3:] = np.maximum(per_image[:, 3:], 0.94 * scales)
    result = emergence_step_bootstrap(range(6), per_image, n_resamples=200)
    assert result == {"step": 3, "ci_low": 3, "ci_high": 3, "undefined_fraction": 0.0}


def _reference_emergence_bootstrap(steps, per_image, higher, n_resamples, level, seed):
    """Loop version: per resample, NaN-ignoring mean curve of the drawn images."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(n_resamples):
        picks = rng.integers(0, per_image.shape[0], size=per_image.shape[0])
        drawn = per_image[picks]
        curve = [
            np.mean(column[~np.isnan(column)]) if (~np.isnan(column)).any() else np.nan
            for column in drawn.T
        ]
        found.append(emergence_step(steps, curve, 0.9, higher))
    defined = sorted(step for step in found if step is not None)
    alpha = (1 - level) / 2
    # Empirical quantile: the smallest value whose cumulative share reaches q.
    low = defined[math.ceil(alpha * len(defined)) - 1]
    high = defined[math.ceil((1 - alpha) * len(defined)) - 1]
    return low, high, 1 - len(defined) / n_resamples


@pytest.mark.parametrize("higher", [True, False])
def test_emergence_bootstrap_matches_loop_reference(higher):
    rng = np.random.default_rng(11)
    steps = [0, 5, 10, 15, 20, 25, 30, 35]
    # Noisy saturating curves (rising scores or falling errors), two images with a negative
    # final score so that some resamples have no emergence step, and scattered NaNs.
    decay = np.exp(-np.arange(len(steps)) / 2)
    trend = 1.0 - decay if higher else 1.0 + 2.0 * decay
    per_image = trend + rng.normal(scale=0.2, size=(15, len(steps)))
    if higher:
        per_image[:2, -1] = -3.0
    per_image = _with_nans(rng, per_image, 0.1)
    per_image[0, 2] = np.nan
    result = emergence_step_bootstrap(
        steps, per_image, higher_is_better=higher, n_resamples=400, level=0.8, seed=5
    )
    low, high, undefined = _reference_emergence_bootstrap(steps, per_image, higher, 400, 0.8, 5)
    point = emergence_step(steps, np.nanmean(per_image, axis=0), higher_is_better=higher)
    assert result["step"] == point
    assert (result["ci_low"], result["ci_high"]) == (low, high)
    assert result["undefined_fraction"] == pytest.approx(undefined, abs=1e-12)
    # The data must give a real interval, and undefined resamples when expected.
    assert result["ci_low"] < result["ci_high"]
    assert (0.0 < result["undefined_fraction"] < 1.0) == higher


def test_emergence_bootstrap_mean_curve_ignores_nan_entries():
    # Mean curve [0, 1, 1] (NaNs skipped) emerges at step 1; reading NaN as 0 would give step 2.
    per_image = np.array([[0.0, 1.0, 1.0], [np.nan, np.nan, 1.0]])
    assert emergence_step_bootstrap([0, 1, 2], per_image, n_resamples=20)["step"] == 1


def test_emergence_bootstrap_without_any_signal():
    per_image = -np.ones((5, 4))
    result = emergence_step_bootstrap([1, 2, 3, 4], per_image, n_resamples=50)
    assert result == {"step": None, "ci_low": None, "ci_high": None, "undefined_fraction": 1.0}
