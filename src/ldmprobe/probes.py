"""Linear probes: one per-token linear map per (layer, step) and task.

The probe's logits live on the layer's token grid (h x w). The reference upsamples them
(nearest) to the label resolution (H x W = k*h x k*w) before the loss. For cross-entropy and
squared error that equals a loss at the native grid against the k x k average-pooled label, up
to a constant factor and an additive constant (each token's logits are shared by its k x k
pixels), so ``loss_resolution: native`` is exact there and k^2 times cheaper. Huber is not
separable that way; ``loss_resolution: label`` computes the reference's loss exactly by
broadcasting each token over its pixel block (no interpolation needed).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 30
    batch_images: int = 4
    lr: float = 1e-3
    seed: int = 0
    loss: str = "auto"  # auto: cross-entropy (binary), huber (continuous); or "mse"
    huber_delta: float = 1.0
    loss_resolution: str = "auto"  # auto: native where exact (CE, MSE), label for Huber
    target_scaling: str = "train"  # "train" (train-set mean/std), "fixed" or "none"
    target_mean: float = 0.0
    target_std: float = 1.0

    def loss_name(self, kind: str) -> str:
        if self.loss != "auto":
            return self.loss
        return "cross_entropy" if kind == "binary" else "huber"

    def resolution(self, kind: str) -> str:
        if self.loss_resolution != "auto":
            return self.loss_resolution
        return "label" if self.loss_name(kind) == "huber" else "native"


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
    target: torch.Tensor,  # native: [n, h, w]; label: [n, H, W]
    height: int,
    width: int,
) -> torch.Tensor:
    n = output.shape[0]
    name = settings.loss_name(kind)
    if settings.resolution(kind) == "native":
        grid = output.reshape(n, height, width, -1)
        if name == "cross_entropy":
            log_probs = torch.log_softmax(grid, dim=-1)
            soft = torch.stack([1 - target, target], dim=-1)
            return -(soft * log_probs).sum(-1).mean()
        prediction = grid[..., 0]
        if name == "mse":
            return torch.nn.functional.mse_loss(prediction, target)
        return torch.nn.functional.huber_loss(prediction, target, delta=settings.huber_delta)
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


def train_probe(
    kind: str,
    settings: ProbeSettings,
    train_x: torch.Tensor,  # [n, h*w, c], float16 kept as stored: cast batch by batch
    train_labels: torch.Tensor,  # [n, H, W] float32, label resolution
    val_x: torch.Tensor,
    val_labels: torch.Tensor,
    height: int,
    width: int,
) -> TrainedProbe:
    torch.manual_seed(settings.seed)
    mean, std = scaling_for(kind, settings, train_labels)
    resolution = settings.resolution(kind)

    def prepare(labels: torch.Tensor) -> torch.Tensor:
        scaled = (labels - mean) / std
        return pool_to_grid(scaled, height, width) if resolution == "native" else scaled

    train_targets, val_targets = prepare(train_labels), prepare(val_labels)
    probe = LinearProbe(train_x.shape[-1], kind)
    optimiser = Adam(probe.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    best_state, best_loss, best_epoch = None, float("inf"), settings.epochs - 1
    history = []
    for epoch in range(settings.epochs):
        order = torch.randperm(train_x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_images):
            # index_select: advanced indexing is several times slower in this torch build.
            index = order[start : start + settings.batch_images]
            batch_x = train_x.index_select(0, index).float()
            batch_y = train_targets.index_select(0, index)
            loss = probe_loss(kind, settings, probe(batch_x), batch_y, height, width)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        record = {"epoch": epoch, "train_loss": total / max(len(order), 1)}
        if len(val_x):
            val_loss = chunked_loss(kind, settings, probe, val_x, val_targets, height, width)
            record["val_loss"] = val_loss
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = copy.deepcopy(probe.state_dict())
        history.append(record)
        log.info("epoch %d/%d %s", epoch + 1, settings.epochs, record)
    if best_state is not None:
        probe.load_state_dict(best_state)
    return TrainedProbe(
        probe=probe,
        chosen_epoch=best_epoch,
        selection="val" if best_state is not None else "last",
        history=history,
        target_mean=mean,
        target_std=std,
    )


def chunked_loss(kind, settings, probe, x, targets, height, width, chunk: int = 16) -> float:
    """Mean loss over all images, computed a few images at a time to bound memory."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk].float()
            loss = probe_loss(
                kind, settings, probe(part), targets[start : start + chunk], height, width
            )
            total += float(loss) * part.shape[0]
    return total / max(x.shape[0], 1)


def predict_maps(trained: TrainedProbe, x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Probe output on the token grid: foreground mask (binary) or target units (continuous)."""
    with torch.no_grad():
        output = torch.cat([trained.probe(part.float()) for part in x.split(16)])
        output = output.reshape(x.shape[0], height, width, -1)
    if trained.probe.kind == "binary":
        return (output.argmax(-1) == 1).numpy()
    return (output[..., 0] * trained.target_std + trained.target_mean).numpy()


def evaluate(
    trained: TrainedProbe, x: torch.Tensor, labels: np.ndarray, height: int, width: int
) -> list[dict[str, float]]:
    """Per-image metrics at the label resolution (nearest-upsampled probe output)."""
    predictions = predict_maps(trained, x, height, width)
    results = []
    for prediction, label in zip(predictions, labels, strict=True):
        upsampled = metrics.upsample_nearest(prediction, label.shape)
        if trained.probe.kind == "binary":
            results.append(metrics.image_metrics("binary", upsampled, label > 0.5))
        else:
            # RMSE in standardised units, as the reference reports it.
            scaled_pred = (upsampled - trained.target_mean) / trained.target_std
            scaled_label = (label - trained.target_mean) / trained.target_std
            results.append(metrics.image_metrics("continuous", scaled_pred, scaled_label))
    return results


def state_tensors(trained: TrainedProbe, task: str) -> dict[str, torch.Tensor]:
    return {f"{task}.{name}": value for name, value in trained.probe.state_dict().items()}
