"""The intervention's pure parts on constructed cases with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ldmprobe.core.metrics import psnr
from ldmprobe.intervention.conditions import random_probe
from ldmprobe.intervention.optimise import EditProbe, EditSettings, optimise_activation
from ldmprobe.intervention.scores import (
    centroid,
    depth_scores,
    displacement_ratio,
    fit_scale_shift,
    relative_edit,
    saliency_scores,
)
from ldmprobe.intervention.summary import summarise_edits
from ldmprobe.intervention.targets import (
    IDENTITY,
    Offset,
    draw_offset,
    offset_range,
    probe_units,
    reference_depth_units,
    translate,
    translated_label,
    trial_rng,
)
from ldmprobe.probing.probes import LinearProbe, ProbeSettings

# --- targets ---------------------------------------------------------------------------------


def test_offset_range_is_the_reference_range_scaled_to_the_size():
    assert offset_range(512) == (90, 120)
    assert offset_range(256) == (45, 60)
    assert offset_range(128) == (22, 30)  # 22.5 rounds to even, 30 exclusive
    assert offset_range(8) == (1, 2)  # never empty


def test_offsets_cover_both_signs_and_stay_in_range():
    rng = np.random.default_rng(0)
    offsets = [draw_offset(rng, 512, 256) for _ in range(400)]
    rows = np.array([o.dy for o in offsets])
    cols = np.array([o.dx for o in offsets])
    assert set(np.sign(rows)) == {-1, 1} and set(np.sign(cols)) == {-1, 1}
    assert np.abs(rows).min() >= 90 and np.abs(rows).max() < 120
    assert np.abs(cols).min() >= 45 and np.abs(cols).max() < 60


def test_trial_offsets_depend_only_on_their_own_key():
    first = draw_offset(trial_rng(0, "cat", 7, 2), 512, 512)
    assert first == draw_offset(trial_rng(0, "cat", 7, 2), 512, 512)
    others = {draw_offset(trial_rng(0, "cat", 7, t), 512, 512) for t in range(5)}
    assert len(others) > 1
    assert draw_offset(trial_rng(1, "cat", 7, 2), 512, 512) != first or len(others) > 1


def test_mask_translation_fills_the_vacated_area_with_background():
    mask = np.zeros((6, 6), np.float32)
    mask[1:3, 1:3] = 1
    mask[:, 0] = 1  # touches the left edge: must not be smeared
    moved = translated_label("binary", mask, Offset(2, 3))
    expected = np.zeros((6, 6), np.float32)
    expected[3:5, 4:6] = 1
    expected[2:, 3] = 1
    np.testing.assert_array_equal(moved, expected)
    assert moved.dtype == mask.dtype


def test_depth_translation_replicates_the_edge_into_the_vacated_strip():
    depth = np.arange(16, dtype=np.float32).reshape(4, 4)
    moved = translated_label("continuous", depth, Offset(-1, 2))
    # Rows move up by one (the last row repeats), columns right by two (the first repeats).
    np.testing.assert_array_equal(
        moved,
        np.array([[4, 4, 4, 5], [8, 8, 8, 9], [12, 12, 12, 13], [12, 12, 12, 13]], np.float32),
    )
    np.testing.assert_array_equal(translated_label("continuous", depth, IDENTITY), depth)


def test_translation_of_a_stack_moves_every_map():
    maps = np.random.default_rng(0).random((3, 5, 7))
    moved = translate(maps, Offset(1, -2), fill=0.0)
    for one, result in zip(maps, moved, strict=True):
        np.testing.assert_array_equal(translate(one, Offset(1, -2), fill=0.0), result)


def test_depth_targets_in_the_reference_and_probe_units():
    depth = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(reference_depth_units(depth), [[-9, -4.5], [0, 9]])
    np.testing.assert_allclose(
        probe_units("continuous", depth, "probe", 4.0, 2.0), [[-1, 0], [1, 3]]
    )
    mask = np.array([[0, 1], [1, 0]], np.float32)
    np.testing.assert_array_equal(probe_units("binary", mask, "reference", 5.0, 3.0), mask)
    with pytest.raises(ValueError, match="scaling"):
        probe_units("continuous", depth, "minmax", 0.0, 1.0)


# --- the optimiser ---------------------------------------------------------------------------

GRID = 4  # tokens per side
K = 2  # label pixels per token side


def one_channel_probe(kind, weight, bias=None, loss="auto", resolution="auto"):
    probe = LinearProbe(1, kind)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.tensor(weight, dtype=torch.float32).reshape(-1, 1))
        if bias is not None:
            probe.linear.bias.fill_(bias)
    settings = ProbeSettings(loss=loss, loss_resolution=resolution)
    return EditProbe(probe, settings, GRID, GRID)


def blocks(per_token: np.ndarray) -> torch.Tensor:
    """A label-resolution map whose every token's K x K block holds one value."""
    return torch.from_numpy(np.kron(per_token, np.ones((K, K))).astype(np.float32))


@pytest.mark.parametrize("resolution", ["native", "label"])
def test_the_edit_reaches_the_closed_form_optimum_of_a_continuous_probe(resolution):
    """Huber of w*a + b against a constant block is minimal exactly at a = (t - b) / w, the
    one optimum of a one-channel probe; the reference's budget gets there from 0.3 away."""
    probe = one_channel_probe("continuous", [2.0], bias=0.5, resolution=resolution)
    rng = np.random.default_rng(0)
    wanted = rng.uniform(-1, 1, (GRID, GRID))
    optimum = (wanted - 0.5) / 2.0
    start = torch.from_numpy(optimum + rng.uniform(-0.3, 0.3, optimum.shape)).float()
    start = start.reshape(GRID * GRID, 1)
    result = optimise_activation(probe, start, blocks(wanted))
    np.testing.assert_allclose(result.activation.reshape(GRID, GRID), optimum, atol=0.01)
    assert result.final_loss < 1e-3 < result.initial_loss
    assert len(result.losses) == EditSettings().iterations + 1


def test_the_edit_reaches_the_closed_form_optimum_of_a_binary_probe():
    """Cross-entropy of two logits (w0 a, w1 a) against a block with foreground share p is
    minimal where softmax gives p: a = logit(p) / (w1 - w0)."""
    probe = one_channel_probe("binary", [-1.0, 1.5])
    share = np.random.default_rng(1).integers(1, K * K, (GRID, GRID))  # 1..3 of 4 pixels
    mask = np.zeros((GRID * K, GRID * K), np.float32)
    for row in range(GRID):
        for col in range(GRID):
            block = np.zeros(K * K, np.float32)
            block[: share[row, col]] = 1
            mask[row * K : (row + 1) * K, col * K : (col + 1) * K] = block.reshape(K, K)
    p = share / (K * K)
    optimum = np.log(p / (1 - p)) / 2.5
    start = torch.from_numpy(optimum + 0.25).float().reshape(-1, 1)
    result = optimise_activation(probe, start, torch.from_numpy(mask))
    np.testing.assert_allclose(result.activation.reshape(GRID, GRID), optimum, atol=0.02)


def test_a_wide_probe_is_made_to_output_the_target_and_nothing_else_changes():
    torch.manual_seed(0)
    probe = LinearProbe(16, "continuous")
    edit_probe = EditProbe(probe, ProbeSettings(loss="mse"), GRID, GRID)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    activation = torch.randn(GRID * GRID, 16, dtype=torch.float16)
    original = activation.clone()
    wanted = np.random.default_rng(2).uniform(-0.5, 0.5, (GRID, GRID))
    result = optimise_activation(
        edit_probe, activation, blocks(wanted), EditSettings(iterations=400)
    )
    with torch.no_grad():
        output = probe(result.activation)[:, 0].reshape(GRID, GRID)
    np.testing.assert_allclose(output, wanted, atol=0.02)
    assert result.activation.dtype == torch.float32
    assert torch.equal(activation, original)
    for key, value in probe.state_dict().items():
        assert torch.equal(value, before[key])


def test_random_probe_keeps_the_norm_and_is_fixed_by_its_cell():
    torch.manual_seed(0)
    trained = EditProbe(LinearProbe(32, "continuous"), ProbeSettings(), GRID, GRID)
    first = random_probe(trained, 0, "up1.0", 3)
    again = random_probe(trained, 0, "up1.0", 3)
    other = random_probe(trained, 0, "up1.0", 4)

    def flat(edit_probe):
        return torch.cat([p.detach().flatten() for p in edit_probe.probe.parameters()])

    assert torch.isclose(flat(first).norm(), flat(trained).norm())
    assert not torch.equal(first.probe.linear.weight, trained.probe.linear.weight)
    assert torch.equal(flat(first), flat(again))
    assert not torch.equal(flat(first), flat(other))
    assert first.settings == trained.settings


# --- scores ----------------------------------------------------------------------------------


def square(size, top, left, side):
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_centroid_of_a_square_and_of_nothing():
    np.testing.assert_allclose(centroid(square(20, 2, 4, 4)), [3.5, 5.5])
    assert centroid(np.zeros((5, 5), bool)) is None


def test_an_object_moved_all_the_way_scores_one():
    original = square(64, 10, 10, 12)
    offset = Offset(20, -6)
    edited = translated_label("binary", original, offset).astype(bool)
    scores = saliency_scores(original, edited, offset)
    assert scores["dice_edited"] == 1.0
    # Unmoved, rows 10..21 miss the target's rows 30..41.
    assert scores["dice_original"] == 0.0
    assert scores["delta_dice"] == 1.0
    assert scores["displacement"] == pytest.approx(1.0)


def test_an_object_that_stayed_scores_zero_and_half_way_scores_a_half():
    original = square(64, 20, 20, 10)
    offset = Offset(0, 20)
    assert saliency_scores(original, original, offset)["displacement"] == 0.0
    assert saliency_scores(original, original, offset)["delta_dice"] == 0.0
    half = square(64, 20, 30, 10)
    scores = saliency_scores(original, half, offset)
    assert scores["displacement"] == pytest.approx(0.5)
    # Target columns 40..49; the half-way square 30..39 does not overlap it.
    assert scores["delta_dice"] == 0.0


def test_displacement_counts_only_the_move_along_the_offset():
    original = square(64, 20, 20, 10)
    sideways = square(64, 35, 20, 10)  # 15 rows down
    assert displacement_ratio(original, sideways, Offset(0, 20)) == 0.0
    backwards = square(64, 20, 10, 10)
    assert displacement_ratio(original, backwards, Offset(0, 20)) == pytest.approx(-0.5)
    diagonal = square(64, 26, 28, 10)  # moved (6, 8) along an offset of (6, 8)
    assert displacement_ratio(original, diagonal, Offset(6, 8)) == pytest.approx(1.0)


def test_displacement_is_undefined_without_an_offset_or_a_mask():
    original = square(32, 5, 5, 6)
    assert math.isnan(displacement_ratio(original, original, IDENTITY))
    assert math.isnan(displacement_ratio(original, np.zeros_like(original), Offset(3, 3)))


def test_delta_dice_of_a_partial_overlap():
    original = square(40, 0, 0, 10)
    offset = Offset(0, 10)
    edited = square(40, 0, 5, 10)  # covers half of the target (columns 10..14 of 10..19)
    scores = saliency_scores(original, edited, offset)
    assert scores["dice_edited"] == pytest.approx(0.5)
    assert scores["delta_dice"] == pytest.approx(0.5)


def test_depth_scores_of_a_moved_and_an_unmoved_map():
    rng = np.random.default_rng(0)
    original = rng.random((32, 32)).cumsum(0)  # a smooth ramp with texture
    offset = Offset(5, -7)
    target = translated_label("continuous", original, offset)
    moved = depth_scores(original, 3.0 * target + 2.0, offset)  # scale and shift unknown
    assert moved["spearman_edited"] == pytest.approx(1.0)
    assert moved["delta_rmse"] < 0 < moved["delta_spearman"]
    assert depth_scores(original, original, offset)["delta_spearman"] == 0.0


def test_the_fit_recovers_scale_and_shift():
    x = np.linspace(0, 1, 50).reshape(5, 10)
    np.testing.assert_allclose(fit_scale_shift(x, 4 * x - 1), 4 * x - 1, atol=1e-12)


def test_psnr_and_relative_edit():
    image = np.full((4, 4, 3), 100, np.uint8)
    assert psnr(image, image) == math.inf
    other = image.copy()
    other[0, 0, 0] = 110  # MSE = 100 / 48
    assert psnr(image, other) == pytest.approx(10 * math.log10(255**2 * 48 / 100))
    assert relative_edit(1.0, 4.0) == 0.5


# --- summary ---------------------------------------------------------------------------------


def test_summary_averages_trials_per_image_and_pairs_the_controls_by_image():
    rows = []
    for image in range(4):
        for trial in range(2):
            for condition, value in (("probe", 1.0 + image), ("random-probe", 0.5 + trial)):
                rows.append(
                    {
                        "prompt_id": f"p{image}",
                        "seed": 0,
                        "trial": trial,
                        "task": "saliency",
                        "condition": condition,
                        "metric": "displacement",
                        "value": value,
                    }
                )
    table = summarise_edits(pd.DataFrame(rows), {"bootstrap_resamples": 200, "seed": 0})
    probe = table[(table.condition == "probe") & (table.minus == "")].iloc[0]
    assert probe["mean"] == 2.5 and probe["n_images"] == 4 and probe["n_edits"] == 8
    assert probe["ci_low"] < 2.5 < probe["ci_high"]
    random = table[table.condition == "random-probe"].iloc[0]
    assert random["mean"] == 1.0 and random["ci_low"] == random["ci_high"] == 1.0
    difference = table[table.minus == "random-probe"].iloc[0]
    assert difference["mean"] == 1.5 and difference["n_images"] == 4


# --- the edit during generation (tiny random SD model) ---------------------------------------

GENERATION = {"height": 64, "width": 64, "steps": 6, "guidance_scale": 7.5}


def record_attention(pipe, layers, run):
    """Every layer's self-attention output (both CFG halves) at every step while ``run()``
    generates. Read at the attn1 module, whose output is the edited projection's, so edits
    made on the projection are seen."""
    from ldmprobe.backbones import backbone_of
    from ldmprobe.backbones.trace import Point, Trace

    backbone = backbone_of(pipe)
    records = {}

    def keep(layer, half, step, tokens):
        records[(layer, half, step)] = tokens.clone()

    points = [Point(layer.name, layer.module_path) for layer in layers]
    with Trace(
        backbone.denoiser(pipe),
        points,
        halves=("uncond", "cond"),
        layout=backbone.cfg_layout,
        record=keep,
    ):
        result = run()
    return records, result


def test_the_trace_edit_changes_only_the_edited_sites_of_the_conditional_half(demo_pipe, tmp_path):
    from ldmprobe.backbones import backbone_of
    from ldmprobe.backbones.layers import discover_layers
    from ldmprobe.intervention.edit import ProbeEdit, generate_edited

    pipe = demo_pipe
    layers = discover_layers(backbone_of(pipe), pipe.unet, 8, 8)
    by_name = {layer.name: layer for layer in layers}
    edited_layers, edited_steps = ["up2.0", "up3.1"], [2, 3]
    torch.manual_seed(0)
    probes = {
        (name, step): EditProbe(
            LinearProbe(by_name[name].channels, "binary"),
            ProbeSettings(),
            by_name[name].height,
            by_name[name].width,
        )
        for name in edited_layers
        for step in edited_steps
    }
    target = np.zeros((64, 64), np.float32)
    target[8:40, 20:60] = 1
    edit = ProbeEdit(probes, lambda probe: target, EditSettings(iterations=4))

    def generate(with_edit):
        return lambda: generate_edited(pipe, "a red cube", 7, GENERATION, layers, with_edit)

    plain, plain_image = record_attention(pipe, layers, generate(None))
    edited, edited_image = record_attention(pipe, layers, generate(edit))

    assert [(site["layer"], site["step"]) for site in edit.sites] == [
        (layer, step) for step in edited_steps for layer in edited_layers
    ]
    assert edited_image.calls == plain_image.calls == GENERATION["steps"]
    first_step, first_layer = edited_steps[0], by_name[edited_layers[0]].order
    for (name, half, step), before in plain.items():
        after = edited[(name, half, step)]
        order = by_name[name].order
        unchanged = (
            step < first_step
            or (step == first_step and half == "uncond")
            or (step == first_step and order < first_layer)
        )
        if unchanged:
            assert torch.equal(before, after), (name, half, step)
        if half == "cond" and (name, step) in probes:
            assert not torch.equal(before, after), (name, half, step)
    np.testing.assert_array_equal(edited_image.x0[:first_step], plain_image.x0[:first_step])
    assert not np.array_equal(np.asarray(edited_image.image), np.asarray(plain_image.image))

    # Unedited, the intervention's generation is the study's own image: PSNR measures the edit.
    from PIL import Image

    from ldmprobe.generation.generate import GenerationSettings, generate

    settings = GenerationSettings(height=64, width=64, steps=GENERATION["steps"], halves=())
    paths = [tmp_path / name for name in ("image.png", "previews", "store.zarr", "meta.json")]
    generate(pipe, "a red cube", 7, settings, *paths, provenance={})
    study_image = np.asarray(Image.open(paths[0]).convert("RGB"))
    np.testing.assert_array_equal(study_image, np.asarray(plain_image.image))


def test_probe_edit_leaves_the_unconditional_half_and_other_sites_alone():
    from ldmprobe.intervention.edit import ProbeEdit

    probe = EditProbe(LinearProbe(4, "continuous"), ProbeSettings(), 2, 2)
    edit = ProbeEdit({("up1.0", 3): probe}, lambda p: np.ones((4, 4), np.float32))
    tokens = torch.randn(4, 4, dtype=torch.float16)
    assert edit("up1.0", "uncond", 3, tokens) is None
    assert edit("up1.0", "cond", 2, tokens) is None
    assert edit("up1.1", "cond", 3, tokens) is None
    assert edit.sites == []
    result = edit("up1.0", "cond", 3, tokens)
    assert result.dtype == torch.float16 and result.shape == tokens.shape
    (site,) = edit.sites
    assert site["final_loss"] < site["initial_loss"]
    assert site["delta_squares"] == pytest.approx(
        float((result.float() - tokens.float()).square().sum())
    )
