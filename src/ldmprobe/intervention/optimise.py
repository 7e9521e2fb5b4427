"""The edit of one activation: optimise it so that a trained probe reads the target.

As in Chen et al.'s code: the activation is cloned to a free float32 tensor and optimised with
Adam (lr 5e-3, 128 iterations) under the probe's own training loss (cross-entropy or Huber, at
the resolution its settings name); the probe itself is fixed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..probing.probes import Adam, LinearProbe, ProbeSettings, loss_targets, probe_loss


@dataclass(frozen=True)
class EditSettings:
    lr: float = 5e-3
    iterations: int = 128


@dataclass
class EditProbe:
    """A probe as the edit uses it: the linear map, the settings that define its loss, its
    token grid and the scaling of its continuous targets."""

    probe: LinearProbe
    settings: ProbeSettings
    height: int
    width: int
    target_mean: float = 0.0
    target_std: float = 1.0

    @property
    def kind(self) -> str:
        return self.probe.kind

    def loss(self, activation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The probe's training loss of ``activation`` [tokens, c] against ``target`` [H, W]
        in probe units (label resolution; pooled to the grid where the loss is native)."""
        return probe_loss(
            self.kind,
            self.settings,
            self.probe(activation[None]),
            self.prepare(target),
            self.height,
            self.width,
        )

    def prepare(self, target: torch.Tensor):
        """``target`` as the probe's loss takes it (``probes.loss_targets``; already scaled)."""
        return loss_targets(
            self.kind, self.settings, target[None].float(), 0.0, 1.0, self.height, self.width
        )


def load_edit_probe(path: str | Path, task: str) -> EditProbe:
    """The ``task`` head of a probe cell's ``probe.safetensors`` (``cell.run_cell``)."""
    from ..core.tasks import TASKS
    from ..probing.cell import load_probe_weights

    tensors, metadata = load_probe_weights(path)
    if task not in metadata["training"]:
        raise KeyError(f"{path} holds no {task!r} probe; it has {sorted(metadata['training'])}")
    training = metadata["training"][task]
    state = {
        key.removeprefix(f"{task}."): value
        for key, value in tensors.items()
        if key.startswith(f"{task}.")
    }
    probe = LinearProbe(state["linear.weight"].shape[1], TASKS[task].kind)
    probe.load_state_dict(state)
    height, width = metadata["grid"]
    return EditProbe(
        probe=probe,
        settings=ProbeSettings(**training["settings"]),
        height=height,
        width=width,
        target_mean=training["target_mean"],
        target_std=training["target_std"],
    )


@dataclass
class EditResult:
    activation: torch.Tensor  # the edited activation, float32 [tokens, c]
    losses: list[float] = field(default_factory=list)  # before each step, then after the last

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def optimise_activation(
    probe: EditProbe,
    activation: torch.Tensor,  # [tokens, c], any dtype and device
    target: torch.Tensor,  # [H, W] in probe units (``targets.probe_units``)
    settings: EditSettings = EditSettings(),
) -> EditResult:
    """The activation edited so that the probe outputs ``target``: Adam on a float32 clone
    under the probe's own loss. Neither ``activation`` nor the probe is changed."""
    fixed = copy.deepcopy(probe)
    fixed.probe = fixed.probe.to(activation.device, torch.float32).requires_grad_(False)
    target = torch.as_tensor(target, device=activation.device, dtype=torch.float32)
    edited = activation.detach().to(torch.float32).clone().requires_grad_(True)
    optimiser = Adam([edited], lr=settings.lr)
    losses = []
    with torch.enable_grad():
        for _ in range(settings.iterations):
            optimiser.zero_grad()
            loss = fixed.loss(edited, target)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        with torch.no_grad():
            losses.append(float(fixed.loss(edited, target)))
    return EditResult(edited.detach(), losses)
