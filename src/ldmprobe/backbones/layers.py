"""The probed self-attention layers of a denoiser, discovered from the model itself.

Which modules are probed and how they are named is the backbone adapter's
(``ldmprobe.backbones``); token counts and execution order come from one forward pass on the
meta device through the trace: structure only, no weights, no compute.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Layer:
    name: str  # short, path-safe: "down0.1", "mid.0", "up3.2" (".t1" for deeper transformers)
    module_path: str  # the probed module (SD: the attn1 module; the adapter's point reads it)
    block: str  # "down_blocks.0", "mid_block", "up_blocks.3"
    index: int  # position inside its block, in execution order
    order: int  # position in the denoiser's execution order
    height: int  # token grid at the discovery latent size
    width: int
    channels: int

    def to_dict(self) -> dict:
        return asdict(self)


def discover_layers(backbone, denoiser, latent_height: int, latent_width: int) -> list[Layer]:
    """All probed layers of ``denoiser`` (of ``backbone``, an adapter) in execution order; the
    denoiser may live on 'meta'."""
    import torch

    from .trace import Trace

    modules = backbone.probed_modules(denoiser)
    if not modules:
        raise ValueError(f"the {backbone.name} denoiser has no self-attention modules to probe")
    points = [backbone.point(name, path) for path, (name, _block) in modules.items()]
    path_of = {name: path for path, (name, _block) in modules.items()}
    seen: list[tuple[str, tuple[int, ...]]] = []
    with (
        Trace(
            denoiser,
            points,
            halves=("cond",),
            layout=backbone.cfg_layout,
            record=lambda layer, _half, _step, tokens: seen.append((layer, tuple(tokens.shape))),
        ),
        torch.no_grad(),
    ):
        backbone.discovery_call(denoiser, latent_height, latent_width)

    layers = []
    per_block: dict[str, int] = {}
    for order, (name, shape) in enumerate(seen):
        path = path_of[name]
        block = modules[path][1]
        tokens, channels = shape
        factor = round((latent_height * latent_width / tokens) ** 0.5)
        index = per_block.get(block, 0)
        per_block[block] = index + 1
        layers.append(
            Layer(
                name=name,
                module_path=path,
                block=block,
                index=index,
                order=order,
                height=latent_height // factor,
                width=latent_width // factor,
                channels=channels,
            )
        )
    return layers


def select_layers(layers: list[Layer], patterns: list[str] | str) -> list[Layer]:
    """Layers whose short name, block or module path matches any fnmatch pattern.

    Raises ValueError naming each pattern that matches no layer, with the available names.
    """
    if patterns == "all":
        return list(layers)
    chosen = []
    unmatched = []
    for pattern in patterns:
        hits = [
            layer
            for layer in layers
            if any(
                fnmatch.fnmatchcase(value, pattern)
                for value in (layer.name, layer.block, layer.module_path)
            )
        ]
        if not hits:
            unmatched.append(pattern)
        chosen.extend(hits)
    if unmatched:
        available = ", ".join(layer.name for layer in layers)
        raise ValueError(
            f"probe.layers: pattern(s) {unmatched} match no layer of this model; "
            f"available layers: {available} (blocks and module paths match too)"
        )
    return [layer for layer in layers if layer in chosen]
