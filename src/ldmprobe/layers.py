"""Discovering the U-Net's self-attention layers from the model itself.

Every module whose name ends in ``attn1`` is a self-attention layer. The study reads the output
of its output projection (``attn1.to_out.0``), which equals the module's output for SD's
attention (no residual inside, rescale factor 1). Token counts and execution order come from a
forward pass on the meta device: structure only, no weights, no compute.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass

_PATH = re.compile(
    r"^(?:(?P<kind>down|up)_blocks\.(?P<block>\d+)|mid_block)"
    r"\.attentions\.(?P<attention>\d+)\.transformer_blocks\.(?P<transformer>\d+)\.attn1$"
)


@dataclass(frozen=True)
class Layer:
    name: str  # short, path-safe: "down0.1", "mid.0", "up3.2" (".t1" for deeper transformers)
    module_path: str  # the attn1 module
    block: str  # "down_blocks.0", "mid_block", "up_blocks.3"
    index: int  # position inside its block, in execution order
    order: int  # position in the U-Net's execution order
    height: int  # token grid at the discovery latent size
    width: int
    channels: int

    @property
    def hook_path(self) -> str:
        return f"{self.module_path}.to_out.0"

    def to_dict(self) -> dict:
        return asdict(self)


def layer_name(module_path: str) -> tuple[str, str]:
    """Short name and block of an attn1 module path."""
    match = _PATH.match(module_path)
    if match is None:
        # Unknown layouts still work: the full path is a valid, if long, name.
        return module_path.removesuffix(".attn1"), module_path.split(".attentions.")[0]
    if match["kind"] is None:
        short, block = "mid", "mid_block"
    else:
        short = f"{match['kind']}{match['block']}"
        block = f"{match['kind']}_blocks.{match['block']}"
    name = f"{short}.{match['attention']}"
    if match["transformer"] != "0":
        name += f".t{match['transformer']}"
    return name, block


def find_attn1_modules(unet) -> dict[str, object]:
    return {path: module for path, module in unet.named_modules() if path.endswith("attn1")}


def discover_layers(unet, latent_height: int = 64, latent_width: int = 64) -> list[Layer]:
    """All self-attention layers of ``unet`` in execution order (unet may live on 'meta')."""
    import torch

    modules = find_attn1_modules(unet)
    if not modules:
        raise ValueError("the U-Net has no self-attention ('attn1') modules to probe")
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        module.to_out[0].register_forward_hook(
            lambda _m, _i, output, path=path: seen.append((path, tuple(output.shape)))
        )
        for path, module in modules.items()
    ]
    device = next(unet.parameters()).device
    config = unet.config
    try:
        with torch.no_grad():
            unet(
                torch.zeros(1, config.in_channels, latent_height, latent_width, device=device),
                torch.tensor(1, device=device),
                encoder_hidden_states=torch.zeros(1, 77, config.cross_attention_dim, device=device),
            )
    finally:
        for handle in handles:
            handle.remove()

    layers = []
    per_block: dict[str, int] = {}
    for order, (path, shape) in enumerate(seen):
        name, block = layer_name(path)
        tokens, channels = shape[1], shape[2]
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
            f"probe.layers: pattern(s) {unmatched} match no layer of this U-Net; "
            f"available layers: {available} (blocks and module paths match too)"
        )
    return [layer for layer in layers if layer in chosen]
