import numpy as np
import pytest
import torch

from ldmprobe.probing.probes import (
    Adam,
    ProbeSettings,
    ProbeTask,
    SortedBlocks,
    evaluate,
    loss_targets,
    pool_to_grid,
    probe_loss,
    train_probe,
    train_probes,
)

H = W = 4  # token grid
K = 4  # label pixels per token side


def synthetic(n, channels=8, seed=0):
    """Activations with a known linear map to a per-token value, labels at K x resolution."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H * W, channels, generator=generator)
    direction = torch.arange(1, channels + 1, dtype=torch.float32) / channels
    value = (x @ direction).reshape(n, H, W)
    labels = value.repeat_interleave(K, 1).repeat_interleave(K, 2)
    return x, labels, direction


def test_continuous_probe_recovers_a_linear_map():
    x, labels, direction = synthetic(40)
    settings = ProbeSettings(epochs=60, lr=0.05, loss="mse", target_scaling="none")
    trained = train_probe(
        "continuous", settings, x[:30], labels[:30], x[30:35], labels[30:35], H, W
    )
    weight = trained.probe.linear.weight.detach()[0]
    assert torch.allclose(weight, direction, atol=0.05)
    scores = evaluate(trained, x[35:], labels[35:].numpy(), H, W)
    assert min(s["pearson"] for s in scores) > 0.99
    # Beyond position: over a foreground mask per image and on the residual after a
    # per-position mean; the probe found the map itself, so both stay near 1.
    foregrounds = np.zeros((5, H * K, W * K), bool)
    foregrounds[:, 4:12, 2:10] = True
    position_mean = labels[:30].double().mean(0).numpy()
    variants = evaluate(trained, x[35:], labels[35:].numpy(), H, W, foregrounds, position_mean)
    for plain, scored in zip(scores, variants, strict=True):
        assert {k: scored[k] for k in plain} == plain
        assert scored["pearson_objects"] > 0.99 and scored["spearman_residual"] > 0.99
    assert "pearson_objects" not in evaluate(trained, x[35:], labels[35:].numpy(), H, W)[0]


def test_binary_probe_separates_a_linear_boundary():
    x, labels, _ = synthetic(40, seed=1)
    masks = (labels > 0).float()
    settings = ProbeSettings(epochs=40, lr=0.05)
    trained = train_probe("binary", settings, x[:30], masks[:30], x[30:35], masks[30:35], H, W)
    assert trained.selection == "val"
    assert trained.probe.linear.bias is None
    scores = evaluate(trained, x[35:], masks[35:].numpy(), H, W)
    assert np.mean([s["dice"] for s in scores]) > 0.9


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_native_loss_equals_reference_upsampled_loss(loss):
    """Nearest-upsampled loss at label resolution == native loss on pooled labels (+ const)."""
    torch.manual_seed(0)
    kind = "binary" if loss == "cross_entropy" else "continuous"
    outputs = 2 if kind == "binary" else 1
    output = torch.randn(3, H * W, outputs, requires_grad=True)
    labels = (torch.rand(3, H * K, W * K) > 0.5).float()
    if kind == "continuous":
        labels = torch.randn(3, H * K, W * K)

    # The reference: interpolate logits to the label size, loss per pixel.
    grid = output.reshape(3, H, W, outputs).permute(0, 3, 1, 2)
    upsampled = torch.nn.functional.interpolate(grid, scale_factor=K, mode="nearest")
    if kind == "binary":
        reference = torch.nn.functional.cross_entropy(upsampled, labels.long())
    else:
        reference = torch.nn.functional.mse_loss(upsampled[:, 0], labels)
    native = probe_loss(
        kind,
        ProbeSettings(loss=loss, loss_resolution="native"),
        output,
        pool_to_grid(labels, H, W),
        H,
        W,
    )
    at_label = probe_loss(
        kind, ProbeSettings(loss=loss, loss_resolution="label"), output, labels, H, W
    )
    (reference_grad,) = torch.autograd.grad(reference, output)
    (native_grad,) = torch.autograd.grad(native, output)
    assert torch.allclose(at_label, reference, atol=1e-6)
    assert torch.allclose(native_grad, reference_grad, atol=1e-6)
    if kind == "binary":
        # Each pixel of a token's block shares its logits: soft-label CE is the same mean.
        assert torch.allclose(native, reference, atol=1e-6)
    else:
        # Squared error differs by the labels' within-block variance, a constant.
        pooled = pool_to_grid(labels, H, W)
        spread = ((labels - pooled.repeat_interleave(K, 1).repeat_interleave(K, 2)) ** 2).mean()
        assert torch.allclose(native + spread, reference, atol=1e-5)


def test_huber_at_label_resolution_matches_interpolated_reference():
    torch.manual_seed(0)
    output = torch.randn(2, H * W, 1) * 3
    labels = torch.randn(2, H * K, W * K) * 3
    upsampled = torch.nn.functional.interpolate(
        output.reshape(2, H, W, 1).permute(0, 3, 1, 2), scale_factor=K, mode="nearest"
    )[:, 0]
    reference = torch.nn.functional.huber_loss(upsampled, labels)
    ours = probe_loss("continuous", ProbeSettings(loss_resolution="label"), output, labels, H, W)
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("delta", [0.1, 1.0, 4.0])
@pytest.mark.parametrize("labels_kind", ["normal", "ties", "offset"])
def test_huber_at_the_token_grid_is_exact(delta, labels_kind):
    """Sorted blocks + prefix sums + searchsorted: the same loss and gradient as Huber on the
    nearest-upsampled prediction at the label resolution, for predictions inside, across and
    outside each block's labels, labels with ties, and blocks far from zero."""
    generator = torch.Generator().manual_seed(1)
    n, k = 3, 8
    labels = torch.randn(n, H * k, W * k, generator=generator) * 2
    if labels_kind == "ties":  # 8-bit steps: many equal labels, some on the bounds
        labels = (labels * 4).round() / 4
    if labels_kind == "offset":
        labels = labels + 50.0
    output = (torch.randn(n, H * W, 1, generator=generator) * 3).requires_grad_()
    if labels_kind == "offset":
        output = (output.detach() + 50.0).requires_grad_()
    settings = ProbeSettings(loss="huber", huber_delta=delta)
    assert settings.resolution("continuous") == "native"
    reference_settings = ProbeSettings(loss="huber", huber_delta=delta, loss_resolution="label")
    sorted_blocks = loss_targets("continuous", settings, labels, 0.0, 1.0, H, W)
    assert isinstance(sorted_blocks, SortedBlocks)
    exact = probe_loss("continuous", settings, output, sorted_blocks, H, W)
    reference = probe_loss("continuous", reference_settings, output, labels, H, W)
    (exact_grad,) = torch.autograd.grad(exact, output)
    (reference_grad,) = torch.autograd.grad(reference, output)
    torch.testing.assert_close(exact, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exact_grad, reference_grad, rtol=1e-4, atol=1e-8)
    # Indexing by image keeps each image's blocks: the loss of a subset is the subset's.
    subset = torch.tensor([2, 0])
    part = probe_loss(
        "continuous", settings, output[subset], sorted_blocks.index_select(0, subset), H, W
    )
    part_reference = probe_loss(
        "continuous", reference_settings, output[subset], labels[subset], H, W
    )
    torch.testing.assert_close(part, part_reference, rtol=1e-5, atol=1e-6)


def test_huber_training_at_the_token_grid_equals_the_label_resolution_one():
    x, labels, _ = synthetic(12, seed=5)
    labels = labels + torch.randn(labels.shape, generator=torch.Generator().manual_seed(0))
    probes = {}
    for resolution in ("native", "label"):
        settings = ProbeSettings(epochs=5, lr=0.05, loss_resolution=resolution)
        probes[resolution] = train_probe(
            "continuous", settings, x[:8], labels[:8], x[8:], labels[8:], H, W
        )
    assert probes["native"].chosen_epoch == probes["label"].chosen_epoch
    for native, label in zip(
        probes["native"].probe.parameters(), probes["label"].probe.parameters(), strict=True
    ):
        torch.testing.assert_close(native, label, rtol=1e-4, atol=1e-5)
    assert [r["val_loss"] for r in probes["native"].history] == pytest.approx(
        [r["val_loss"] for r in probes["label"].history], rel=1e-5
    )


def test_checkpoint_selection_uses_validation_not_test():
    x, labels, _ = synthetic(20, seed=2)
    settings = ProbeSettings(epochs=5, lr=0.5, loss="mse", target_scaling="none")
    trained = train_probe(
        "continuous", settings, x[:10], labels[:10], x[10:15], labels[10:15], H, W
    )
    val_losses = [record["val_loss"] for record in trained.history]
    assert trained.chosen_epoch == int(np.argmin(val_losses))


def test_without_validation_images_the_last_epoch_is_kept():
    x, labels, _ = synthetic(10, seed=3)
    settings = ProbeSettings(epochs=3, loss="mse")
    trained = train_probe("continuous", settings, x, labels, x[:0], labels[:0], H, W)
    assert (trained.selection, trained.chosen_epoch) == ("last", 2)


def test_adam_takes_torch_adams_steps():
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=generator), torch.randn(3, generator=generator)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    optimisers = Adam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01)
    inputs = torch.randn(20, 8, 5, generator=generator)
    for batch in inputs:
        for params, optimiser in zip((ours, theirs), optimisers, strict=True):
            optimiser.zero_grad()
            ((batch @ params[0] + params[1]) ** 2).mean().backward()
            optimiser.step()
    for mine, reference, initial in zip(ours, theirs, start, strict=True):
        assert not torch.equal(mine, initial)
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-7)


def test_probes_trained_together_learn_what_each_learns_alone():
    """One batch read, one product for all heads: each head still has its own initialisation,
    loss, learning rate, Adam and checkpoint; a task on another schedule trains apart."""
    x, labels, _ = synthetic(30, seed=4)
    masks = (labels > 0).float()
    train, val = slice(0, 20), slice(20, 25)
    tasks = {
        "saliency": ProbeSettings(epochs=6, lr=0.05),
        "depth": ProbeSettings(epochs=6, lr=0.01),  # Huber, exact at the token grid
        "shading": ProbeSettings(epochs=6, lr=0.05, loss="mse", target_scaling="none"),
        "slow": ProbeSettings(epochs=4, batch_images=3, loss="mse"),
    }
    maps = {"saliency": masks, "depth": labels, "shading": -labels, "slow": labels * 2}
    problems = {
        name: ProbeTask(
            "binary" if name == "saliency" else "continuous",
            settings,
            maps[name][train],
            maps[name][val],
        )
        for name, settings in tasks.items()
    }
    together = train_probes(problems, x[train], x[val], H, W)
    assert list(together) == list(tasks)
    for name, problem in problems.items():
        alone = train_probes({name: problem}, x[train], x[val], H, W)[name]
        assert together[name].chosen_epoch == alone.chosen_epoch
        assert len(together[name].history) == tasks[name].epochs
        for joint, single in zip(
            together[name].probe.parameters(), alone.probe.parameters(), strict=True
        ):
            torch.testing.assert_close(joint, single, rtol=1e-5, atol=1e-6)
        assert [r["val_loss"] for r in together[name].history] == pytest.approx(
            [r["val_loss"] for r in alone.history], rel=1e-5
        )


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="no CUDA device on this machine"
            ),
        ),
    ],
)
def test_probes_train_where_the_activations_are(device):
    """probe.device: the activations' device is where labels, probes, Adam and the losses
    live. On CUDA the probes equal the CPU's within rtol 1e-4, atol 1e-5 (the order of
    floating-point sums differs); the batches are drawn on the CPU, so they are the same."""
    x, labels, _ = synthetic(16, seed=6)
    masks = (labels > 0).float()
    problems = {
        "saliency": ProbeTask("binary", ProbeSettings(epochs=4, lr=0.05), masks[:10], masks[10:12]),
        "depth": ProbeTask(
            "continuous", ProbeSettings(epochs=4, lr=0.05), labels[:10], labels[10:12]
        ),
    }
    on_cpu = train_probes(problems, x[:10], x[10:12], H, W)
    on_device = train_probes(problems, x[:10].to(device), x[10:12].to(device), H, W)
    for name, trained in on_device.items():
        assert all(p.device.type == device for p in trained.probe.parameters())
        assert trained.chosen_epoch == on_cpu[name].chosen_epoch
        for mine, reference in zip(
            trained.probe.parameters(), on_cpu[name].probe.parameters(), strict=True
        ):
            torch.testing.assert_close(mine.cpu(), reference, rtol=1e-4, atol=1e-5)
        scores = evaluate(trained, x[12:].to(device), labels[12:].numpy(), H, W)
        reference_scores = evaluate(on_cpu[name], x[12:], labels[12:].numpy(), H, W)
        for mine, theirs in zip(scores, reference_scores, strict=True):
            assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-5)
