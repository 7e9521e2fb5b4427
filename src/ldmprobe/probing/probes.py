"""Linear probes: one per-token linear map per (layer, step) and task.

The probe's logits live on the layer's token grid (h x w). The reference upsamples them
(nearest) to the label resolution (H x W = k*h x k*w) before the loss, so each token's one
output meets the k x k labels of its pixel block. Every loss here is computed exactly at the
token grid (``loss_resolution: native``, the default):

* cross-entropy and squared error against the block's mean label: the same gradients as the
  reference (squared error differs by a constant, the labels' within-block variance);
* Huber against the block's labels, sorted once per cell with prefix sums of the values and
  their squares (``SortedBlocks``): Huber over a block is a piecewise function of the token's
  one prediction (linear below and above ``delta``, quadratic between), so two
  ``searchsorted`` calls and prefix-sum differences give the block's exact loss, and autograd
  its exact gradient, in O(log k^2) per token instead of O(k^2).

``loss_resolution: label`` computes the reference's loss by broadcasting each token over its
pixel block (the definition the exact forms are tested against).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..core import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 30
    batch_images: int = 4
    lr: float = 1e-3
    seed: int = 0
    loss: str = "auto"  # auto: cross-entropy (binary), huber (continuous); or "mse"
    huber_delta: float = 1.0
    loss_resolution: str = "auto"  # auto: native (exact for every loss); "label": reference
    target_scaling: str = "train"  # "train" (train-set mean/std), "fixed" or "none"
    target_mean: float = 0.0
    target_std: float = 1.0

    def loss_name(self, kind: str) -> str:
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if kind == "binary" else "huber"

    def resolution(self, kind: str) -> str:
        return "native" if self.loss_resolution == "auto" else self.loss_resolution


def pool_to_grid(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Average-pool labels [n, H, W] to the token grid [n, h, w] (integer factor)."""
    n, big_h, big_w = labels.shape
    if big_h % height or big_w % width:
        raise ValueError(f"label size {big_h}x{big_w} is not a multiple of grid {height}x{width}")
    return labels.reshape(n, height, big_h // height, width, big_w // width).mean(dim=(2, 4))


def blocks(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """View labels [n, H, W] as [n, h, k, w, k] so a [n, h, 1, w, 1] prediction broadcasts."""
    n, big_h, big_w = labels.shape
    return labels.reshape(n, height, big_h // height, width, big_w // width)


@dataclass(frozen=True)
class SortedBlocks:
    """Each token's k x k label block for the exact Huber loss at the token grid: the block's
    mean, its values less the mean sorted ascending, and prefix sums of those values and of
    their squares (a leading zero each). Centring keeps the prefix-sum differences accurate in
    float32. Indexable along images like the label tensor it replaces; indexing only records
    which images (``images``), so a batch copies nothing."""

    mean: torch.Tensor  # [n, h*w]
    values: torch.Tensor  # [n, h*w, k*k]
    sums: torch.Tensor  # [n, h*w, k*k + 1]
    squares: torch.Tensor  # [n, h*w, k*k + 1]
    images: torch.Tensor | None = None  # the selected images, in order; None: all

    @classmethod
    def of(cls, labels: torch.Tensor, height: int, width: int, chunk: int = 16):
        """From labels [n, H, W], a few images at a time to bound the transient memory."""
        parts = []
        for start in range(0, max(labels.shape[0], 1), chunk):
            part = blocks(labels[start : start + chunk], height, width)
            n, k = part.shape[0], part.shape[2]
            values = part.permute(0, 1, 3, 2, 4).reshape(n, height * width, k * k)
            mean = values.mean(-1)
            values = (values - mean[..., None]).sort(-1).values
            zero = values.new_zeros((n, height * width, 1))
            sums = torch.cat([zero, values.cumsum(-1)], -1)
            squares = torch.cat([zero, (values * values).cumsum(-1)], -1)
            parts.append((mean, values, sums, squares))
        return cls(*(torch.cat(tensors) for tensors in zip(*parts, strict=True)))

    def selected(self) -> torch.Tensor:
        if self.images is not None:
            return self.images
        return torch.arange(self.mean.shape[0], device=self.mean.device)

    def index_select(self, dim: int, index: torch.Tensor) -> SortedBlocks:
        if dim != 0:
            raise ValueError("SortedBlocks are indexed along images (dim 0) only")
        return replace(self, images=self.selected().index_select(0, index.to(self.mean.device)))

    def __getitem__(self, part: slice) -> SortedBlocks:
        return replace(self, images=self.selected()[part])

    def __len__(self) -> int:
        return len(self.selected())

    def to(self, device) -> SortedBlocks:
        moved = [t.to(device) for t in (self.mean, self.values, self.sums, self.squares)]
        images = None if self.images is None else self.images.to(device)
        return SortedBlocks(*moved, images=images)


def block_huber(prediction: torch.Tensor, target: SortedBlocks, delta: float) -> torch.Tensor:
    """Mean Huber loss of each token's prediction [n, h*w] against every label of its block:
    equal to the loss of the nearest-upsampled prediction at the label resolution. One image
    at a time, on views of the per-cell tensors (no copy of the selected blocks)."""
    size = target.values.shape[-1]
    total = prediction.new_zeros(())
    for position, image in enumerate(target.selected().tolist()):
        total = total + _block_huber_sum(
            prediction[position] - target.mean[image],
            target.values[image],
            target.sums[image],
            target.squares[image],
            delta,
        )
    return total / (prediction.numel() * size)


def _block_huber_sum(centred, values, sums, squares, delta: float) -> torch.Tensor:
    """Summed Huber loss of one image's tokens (predictions less their block's mean)."""
    size = values.shape[-1]
    # Labels below centred - delta (residual > delta: linear), above centred + delta (linear),
    # between (quadratic). A label exactly on a bound costs the same either way.
    bounds = torch.stack([centred - delta, centred + delta], -1).detach().contiguous()
    index = torch.searchsorted(values, bounds)
    at = sums.gather(-1, index)
    squared = squares.gather(-1, index)
    low, high = index[..., 0].to(centred.dtype), index[..., 1].to(centred.dtype)
    below = delta * (low * centred - at[..., 0]) - 0.5 * delta**2 * low
    above_count = size - high
    above = delta * (sums[..., -1] - at[..., 1] - above_count * centred)
    above = above - 0.5 * delta**2 * above_count
    between = (high - low) * centred * centred - 2 * centred * (at[..., 1] - at[..., 0])
    between = 0.5 * (between + squared[..., 1] - squared[..., 0])
    return (below + above + between).sum()


class Adam:
    """Adam with ``torch.optim.Adam``'s defaults and its exact update (tested equal).

    ``torch.optim`` imports ``torch._dynamo`` on first use, 1.3 s of a probe job that trains a
    small cell in about as long; every grid cell is its own process.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = 0
        self.first_moments = [torch.zeros_like(p) for p in self.params]
        self.second_moments = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.steps)
        correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        moments = zip(self.params, self.first_moments, self.second_moments, strict=True)
        for param, first, second in moments:
            if param.grad is None:
                continue
            first.lerp_(param.grad, 1 - beta1)
            second.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
            denominator = (second.sqrt() / correction2_sqrt).add_(self.eps)
            param.addcdiv_(first, denominator, value=-step_size)


class LinearProbe(torch.nn.Module):
    def __init__(self, channels: int, kind: str):
        super().__init__()
        # Saliency follows the reference: two logits, no bias.
        outputs, bias = (2, False) if kind == "binary" else (1, True)
        self.linear = torch.nn.Linear(channels, outputs, bias=bias)
        self.kind = kind

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens)


def probe_loss(
    kind: str,
    settings: ProbeSettings,
    output: torch.Tensor,  # [n, h*w, outputs]
    target,  # native: [n, h, w], or SortedBlocks for Huber; label: [n, H, W]
    height: int,
    width: int,
) -> torch.Tensor:
    n = output.shape[0]
    name = settings.loss_name(kind)
    if settings.resolution(kind) == "native":
        if name == "huber":
            return block_huber(output[..., 0], target, settings.huber_delta)
        grid = output.reshape(n, height, width, -1)
        if name == "cross_entropy":
            log_probs = torch.log_softmax(grid, dim=-1)
            soft = torch.stack([1 - target, target], dim=-1)
            return -(soft * log_probs).sum(-1).mean()
        return torch.nn.functional.mse_loss(grid[..., 0], target)
    grid = output.reshape(n, height, 1, width, 1, -1)
    target_blocks = blocks(target, height, width)
    if name == "cross_entropy":
        log_probs = torch.log_softmax(grid, dim=-1)
        chosen = torch.where(target_blocks > 0.5, log_probs[..., 1], log_probs[..., 0])
        return -chosen.mean()
    prediction = grid[..., 0].expand_as(target_blocks)
    if name == "mse":
        return torch.nn.functional.mse_loss(prediction, target_blocks)
    return torch.nn.functional.huber_loss(prediction, target_blocks, delta=settings.huber_delta)


@dataclass
class TrainedProbe:
    probe: LinearProbe
    chosen_epoch: int
    selection: str  # "val" or "last" (no validation images)
    history: list[dict]
    target_mean: float
    target_std: float


def scaling_for(kind: str, settings: ProbeSettings, train_labels: torch.Tensor):
    if kind == "binary" or settings.target_scaling == "none":
        return 0.0, 1.0
    if settings.target_scaling == "fixed":
        return settings.target_mean, settings.target_std
    std = float(train_labels.std())
    return float(train_labels.mean()), std if std > 0 else 1.0


@dataclass
class ProbeTask:
    """One task's probe to train on a cell: its kind, settings and labels of each split."""

    kind: str
    settings: ProbeSettings
    train_labels: torch.Tensor  # [n, H, W] float32, label resolution
    val_labels: torch.Tensor


def loss_targets(
    kind: str,
    settings: ProbeSettings,
    labels: torch.Tensor,
    mean: float,
    std: float,
    height: int,
    width: int,
):
    """What ``probe_loss`` compares with, from labels [n, H, W]: scaled, then pooled to the
    grid (cross-entropy, squared error), sorted per block (Huber) or kept (label resolution)."""
    scaled = (labels - mean) / std
    if settings.resolution(kind) == "label":
        return scaled
    if settings.loss_name(kind) == "huber":
        return SortedBlocks.of(scaled, height, width)
    return pool_to_grid(scaled, height, width)


def train_probe(
    kind: str,
    settings: ProbeSettings,
    train_x: torch.Tensor,  # [n, h*w, c]
    train_labels: torch.Tensor,  # [n, H, W] float32, label resolution
    val_x: torch.Tensor,
    val_labels: torch.Tensor,
    height: int,
    width: int,
) -> TrainedProbe:
    task = ProbeTask(kind, settings, train_labels, val_labels)
    return train_probes({"probe": task}, train_x, val_x, height, width)["probe"]


def train_probes(
    tasks: dict[str, ProbeTask],
    train_x: torch.Tensor,  # [n, h*w, c]; float16 is cast batch by batch
    val_x: torch.Tensor,
    height: int,
    width: int,
) -> dict[str, TrainedProbe]:
    """Every task's probe on one cell, on the device the activations are on (labels and
    probes follow them there). Tasks with the same schedule (epochs, batch_images,
    seed) train together: each batch is read once and goes through all their heads in one
    matrix product, as training is bound by reading the activations. Each head keeps its own
    initialisation, loss, learning rate, optimiser and checkpoint choice, so it learns what it
    would alone (tested), up to the order of floating-point sums."""
    schedules: dict[tuple, dict[str, ProbeTask]] = {}
    for name, task in tasks.items():
        key = (task.settings.epochs, task.settings.batch_images, task.settings.seed)
        schedules.setdefault(key, {})[name] = task
    trained = {}
    for together in schedules.values():
        trained.update(_train_together(together, train_x, val_x, height, width))
    return {name: trained[name] for name in tasks}


@dataclass
class _Head:
    task: ProbeTask
    probe: LinearProbe
    optimiser: Adam
    mean: float
    std: float
    train_targets: torch.Tensor
    val_targets: torch.Tensor
    history: list[dict]
    best_state: dict | None = None
    best_loss: float = float("inf")
    best_epoch: int = 0


def _outputs(heads: list[_Head], x: torch.Tensor) -> list[torch.Tensor]:
    """Each head's output on ``x``: one product with the heads' stacked weights."""
    weight = torch.cat([head.probe.linear.weight for head in heads])
    stacked = torch.nn.functional.linear(x, weight)
    outputs = stacked.split([head.probe.linear.out_features for head in heads], dim=-1)
    return [
        output if head.probe.linear.bias is None else output + head.probe.linear.bias
        for head, output in zip(heads, outputs, strict=True)
    ]


def _train_together(
    tasks: dict[str, ProbeTask], train_x, val_x, height: int, width: int
) -> dict[str, TrainedProbe]:
    schedule = next(iter(tasks.values())).settings
    device = train_x.device
    heads = []
    for task in tasks.values():
        torch.manual_seed(task.settings.seed)
        mean, std = scaling_for(task.kind, task.settings, task.train_labels)

        def prepare(labels, task=task, mean=mean, std=std):
            return loss_targets(task.kind, task.settings, labels, mean, std, height, width).to(
                device
            )

        probe = LinearProbe(train_x.shape[-1], task.kind).to(device)
        heads.append(
            _Head(
                task=task,
                probe=probe,
                optimiser=Adam(probe.parameters(), lr=task.settings.lr),
                mean=mean,
                std=std,
                train_targets=prepare(task.train_labels),
                val_targets=prepare(task.val_labels),
                history=[],
                best_epoch=schedule.epochs - 1,
            )
        )
    generator = torch.Generator().manual_seed(schedule.seed)
    for epoch in range(schedule.epochs):
        # The order is drawn on the CPU, so every device trains on the same batches.
        order = torch.randperm(train_x.shape[0], generator=generator).to(device)
        totals = torch.zeros(len(heads), dtype=torch.float64, device=device)
        for start in range(0, len(order), schedule.batch_images):
            # index_select: advanced indexing is several times slower in this torch build.
            index = order[start : start + schedule.batch_images]
            batch_x = train_x.index_select(0, index).float()
            losses = [
                probe_loss(
                    head.task.kind,
                    head.task.settings,
                    output,
                    head.train_targets.index_select(0, index),
                    height,
                    width,
                )
                for head, output in zip(heads, _outputs(heads, batch_x), strict=True)
            ]
            for head in heads:
                head.optimiser.zero_grad()
            # The heads share no parameters: the sum's gradient is each loss's own.
            stacked = torch.stack(losses)
            stacked.sum().backward()
            for head in heads:
                head.optimiser.step()
            # Summed on the device: no synchronisation per batch.
            totals += stacked.detach() * len(index)
        totals = totals.tolist()
        val_losses = _validation_losses(heads, val_x, height, width)
        for number, head in enumerate(heads):
            record = {"epoch": epoch, "train_loss": totals[number] / max(len(order), 1)}
            if val_losses is not None:
                record["val_loss"] = val_losses[number]
                if val_losses[number] < head.best_loss:
                    head.best_loss, head.best_epoch = val_losses[number], epoch
                    head.best_state = copy.deepcopy(head.probe.state_dict())
            head.history.append(record)
        log.info(
            "epoch %d/%d %s",
            epoch + 1,
            schedule.epochs,
            {name: head.history[-1] for name, head in zip(tasks, heads, strict=True)},
        )
    trained = {}
    for name, head in zip(tasks, heads, strict=True):
        if head.best_state is not None:
            head.probe.load_state_dict(head.best_state)
        trained[name] = TrainedProbe(
            probe=head.probe,
            chosen_epoch=head.best_epoch,
            selection="val" if head.best_state is not None else "last",
            history=head.history,
            target_mean=head.mean,
            target_std=head.std,
        )
    return trained


def _validation_losses(heads: list[_Head], x, height: int, width: int, chunk: int = 16):
    """Each head's mean loss over the validation images, a few images at a time to bound
    memory; None without validation images."""
    if not len(x):
        return None
    totals = torch.zeros(len(heads), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            outputs = _outputs(heads, part)
            for number, (head, output) in enumerate(zip(heads, outputs, strict=True)):
                targets = head.val_targets[start : start + chunk]
                loss = probe_loss(
                    head.task.kind, head.task.settings, output, targets, height, width
                )
                totals[number] += loss * part.shape[0]
    return [total / x.shape[0] for total in totals.tolist()]


def predict_maps(trained: TrainedProbe, x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Probe output on the token grid: foreground mask (binary) or target units (continuous)."""
    with torch.no_grad():
        output = torch.cat([trained.probe(part.float()) for part in x.split(16)])
        output = output.reshape(x.shape[0], height, width, -1)
    if trained.probe.kind == "binary":
        return (output.argmax(-1) == 1).cpu().numpy()
    return (output[..., 0] * trained.target_std + trained.target_mean).cpu().numpy()


def evaluate(
    trained: TrainedProbe,
    x: torch.Tensor,
    labels: np.ndarray,
    height: int,
    width: int,
    foregrounds: np.ndarray | None = None,
    position_mean: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Per-image metrics at the label resolution (nearest-upsampled probe output); a
    continuous task's also over each image's ``foregrounds`` mask and on the residual after
    ``position_mean`` (target units), when given (``metrics.VARIANTS``)."""
    predictions = predict_maps(trained, x, height, width)
    results = []
    for number, (prediction, label) in enumerate(zip(predictions, labels, strict=True)):
        upsampled = metrics.upsample_nearest(prediction, label.shape)
        if trained.probe.kind == "binary":
            results.append(metrics.image_metrics("binary", upsampled, label > 0.5))
        else:
            # RMSE in standardised units, as the reference reports it.
            def scaled(values):
                return (values - trained.target_mean) / trained.target_std

            results.append(
                metrics.image_metrics(
                    "continuous",
                    scaled(upsampled),
                    scaled(label),
                    None if foregrounds is None else foregrounds[number],
                    None if position_mean is None else scaled(position_mean),
                )
            )
    return results


def state_tensors(trained: TrainedProbe, task: str) -> dict[str, torch.Tensor]:
    return {f"{task}.{name}": value.cpu() for name, value in trained.probe.state_dict().items()}
