"""Checks made when the Snakefile is parsed, before any job: what the schema cannot say.

Everything here reads small files only (the config, the U-Net's ``config.json``, ``stat`` of
output paths), never torch, because it runs at parse time.

* :func:`check_consistency`: keys that are valid alone but not together (a labeler that does not
  exist or does not make that task's labels, a probed CFG half that generation does not store).
* :func:`check_store`: every probe cell and control reads what ``generation.store`` keeps.
* :func:`disk_preflight`: the bytes the run will still write, estimated from the U-Net's config
  (activations dominate), against the free space of the results filesystem.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .controls import PERMUTED, VAE
from .layers import Layer, layer_name, select_layers
from .reads import check_stored, store_plan

CROSS_ATTENTION_BLOCK = "CrossAttn"  # the block types whose transformers hold an attn1 module
MID_BLOCK_WITH_TRANSFORMER = "UNetMidBlock2DCrossAttn"
LATENT_FACTOR = 8  # pixels per latent cell, as generation assumes
FILE_OVERHEAD = 4096  # headers of one PNG or npz file, rounded up


class DiskSpaceError(RuntimeError):
    """The results filesystem cannot hold what the run will write; the message says what to do."""


def check_consistency(config: dict) -> None:
    """Raise ConfigError naming the key when settings contradict each other (validated config)."""
    from .labels import LABELERS

    for task, section in config["labels"]["tasks"].items():
        key = f"labels.tasks.{task}.labeler"
        name = section["labeler"]
        if name not in LABELERS:
            raise ConfigError(
                f"config key '{key}': {name!r} is not a known labeler; allowed: {sorted(LABELERS)}"
            )
        makes = getattr(LABELERS[name], "tasks", ())
        if makes and task not in makes:
            allowed = sorted(n for n, f in LABELERS.items() if task in getattr(f, "tasks", ()))
            raise ConfigError(
                f"config key '{key}': labeler {name!r} makes {list(makes)} labels, not {task}; "
                f"allowed for {task}: {allowed}"
            )
    generation = config["generation"]
    stored = ["uncond", "cond"] if generation["cfg_half"] == "both" else [generation["cfg_half"]]
    probed = config["probe"]["cfg_half"]
    if probed not in stored:
        raise ConfigError(
            f"config key 'probe.cfg_half': {probed!r} is not stored, generation.cfg_half is "
            f"{generation['cfg_half']!r}; allowed: {stored} (or set generation.cfg_half: both)"
        )
    if "uncond" in stored and generation["guidance_scale"] <= 1:
        raise ConfigError(
            f"config key 'generation.cfg_half': {generation['cfg_half']!r} needs the "
            f"unconditional half, but generation.guidance_scale {generation['guidance_scale']} "
            "<= 1 runs without classifier-free guidance; allowed: ['cond']"
        )


def check_store(config: dict) -> None:
    """Raise ConfigError when a reader asks for a layer or step ``generation.store`` leaves
    out (``reads.check_stored``), from the U-Net's config.json; when the model is not on this
    machine yet (the demo builds it), the probe grid makes the same check once the layer table
    exists."""
    unet_config = find_unet_config(config["models"]["diffusion"])
    if unet_config is not None:
        check_stored(config, *study_layers(config, json.loads(unet_config.read_text())))


def _per_block(value, count: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [value] * count


def attention_layers(unet_config: dict, latent_height: int, latent_width: int) -> list[Layer]:
    """Every self-attention layer, in execution order, from the U-Net's config.json: the
    layer table ``layers.discover_layers`` finds in the model (tested equal), without torch.

    Mirrors how diffusers' UNet2DConditionModel builds its blocks: a cross-attention down block
    holds ``layers_per_block`` transformers, an up block one more, the mid block one; each
    transformer holds ``transformer_layers_per_block`` attn1 modules. Down block i works at the
    latent size halved i times (stride-2 convs round up); up blocks mirror the down blocks.
    """
    down = unet_config["down_block_types"]
    up = unet_config["up_block_types"]
    channels = list(unet_config["block_out_channels"])
    n = len(down)
    per_block = _per_block(unet_config.get("layers_per_block", 2), n)
    depth = _per_block(unet_config.get("transformer_layers_per_block", 1), n)
    up_depth = unet_config.get("reverse_transformer_layers_per_block") or depth[::-1]
    up_depth = _per_block(up_depth, n)
    sizes = [(latent_height, latent_width)]
    for _ in range(n - 1):
        height, width = sizes[-1]
        sizes.append((math.ceil(height / 2), math.ceil(width / 2)))

    # (block prefix, attentions, transformers each, grid, channels) in execution order.
    blocks = []
    for i, block in enumerate(down):
        if CROSS_ATTENTION_BLOCK in block:
            blocks.append((f"down_blocks.{i}", per_block[i], depth[i], sizes[i], channels[i]))
    if unet_config.get("mid_block_type", MID_BLOCK_WITH_TRANSFORMER) == MID_BLOCK_WITH_TRANSFORMER:
        blocks.append(("mid_block", 1, depth[-1], sizes[-1], channels[-1]))
    for i, block in enumerate(up):
        level = n - 1 - i
        if CROSS_ATTENTION_BLOCK in block:
            blocks.append(
                (f"up_blocks.{i}", per_block[level] + 1, up_depth[i], sizes[level], channels[level])
            )
    layers = []
    for prefix, attentions, transformers, (height, width), width_channels in blocks:
        for attention in range(attentions):
            for transformer in range(transformers):
                path = f"{prefix}.attentions.{attention}.transformer_blocks.{transformer}.attn1"
                name, block = layer_name(path)
                index = attention * transformers + transformer
                layers.append(
                    Layer(name, path, block, index, len(layers), height, width, width_channels)
                )
    return layers


def unet_calls(scheduler: str, steps: int) -> int:
    """U-Net calls of a schedule: PNDM without PRK steps repeats one timestep (REFERENCE.md)."""
    return steps + 1 if scheduler == "pndm" else steps


@dataclass(frozen=True)
class ImageFootprint:
    """Bytes one image writes, uncompressed: an upper bound for the compressed files."""

    activations: int  # the stored layers and steps, every stored CFG half, as the codec stores
    latents: int  # float32 x_t and x0 of every call
    pictures: int  # final image and previews as raw RGB (PNG never grows much past raw)
    labels_per_task: int  # float32 target and raw map of the image and of each x0 preview

    @property
    def generation(self) -> int:
        return self.activations + self.latents + self.pictures


@dataclass(frozen=True)
class StoredArray:
    """One activation array a store holds: its shape per step and how many steps it holds."""

    tokens: int
    channels: int
    steps: int
    per_half: bool  # one array per stored CFG half (the U-Net's) or one (the VAE's)


def value_bytes(codec: dict, tokens: int, channels: int) -> float:
    """Bytes per stored activation value, uncompressed, with its share of the scales."""
    scheme = codec.get("quantise", "none")
    if scheme == "int8-token":
        return 1 + 2 / channels
    if scheme == "int8-channel":
        return 1 + 2 / tokens
    return 2


def stored_arrays(
    config: dict, layers: list[Layer], n_calls: int, vae: tuple[int, int] | None
) -> list[StoredArray]:
    """The activation arrays generation writes for ``config`` (``generation.store``), from
    the U-Net's layer table and the VAE control's (tokens, channels) when known."""
    plan = store_plan(config)
    permuted = config["controls"]["permuted_unet"]
    arrays = []
    for source, selection in plan.items():
        steps = len(selection.resolve_steps(n_calls))
        if source == VAE:
            if vae is not None:
                arrays.append(StoredArray(*vae, steps, per_half=False))
            continue
        chosen = set(selection.resolve_layers(layers))
        if source == PERMUTED:
            patterns = permuted["layers"] or config["probe"]["layers"]
            chosen &= {layer.name for layer in select_layers(layers, patterns)}
        arrays += [
            StoredArray(layer.height * layer.width, layer.channels, steps, per_half=True)
            for layer in layers
            if layer.name in chosen
        ]
    return arrays


def image_footprint(
    unet_config: dict, generation: dict, arrays: list[StoredArray] | None = None
) -> ImageFootprint:
    """What one generation job and one label job per task write, for the ``generation`` config;
    ``arrays``: the activation arrays stored (``stored_arrays``; default: every U-Net layer at
    every step)."""
    height, width = generation["height"], generation["width"]
    latent_h, latent_w = height // LATENT_FACTOR, width // LATENT_FACTOR
    calls = unet_calls(generation["scheduler"], generation["steps"])
    halves = 2 if generation["cfg_half"] == "both" else 1
    if arrays is None:
        arrays = [
            StoredArray(layer.height * layer.width, layer.channels, calls, per_half=True)
            for layer in attention_layers(unet_config, latent_h, latent_w)
        ]
    codec = generation.get("codec", {})
    activations = sum(
        array.tokens
        * array.channels
        * array.steps
        * (halves if array.per_half else 1)
        * value_bytes(codec, array.tokens, array.channels)
        for array in arrays
    )
    kinds = generation["previews"]
    labelled_previews = calls if "x0" in kinds else 0
    return ImageFootprint(
        activations=round(activations),
        latents=2 * calls * 4 * latent_h * latent_w * 4,
        pictures=(1 + calls * len(kinds)) * (height * width * 3 + FILE_OVERHEAD),
        labels_per_task=2 * (1 + labelled_previews) * height * width * 4 + FILE_OVERHEAD,
    )


def study_layers(config: dict, unet_config: dict) -> tuple[list[Layer], int]:
    """The U-Net's layer table at the configured size and its U-Net calls, from config.json."""
    generation = config["generation"]
    layers = attention_layers(
        unet_config, generation["height"] // LATENT_FACTOR, generation["width"] // LATENT_FACTOR
    )
    return layers, unet_calls(generation["scheduler"], generation["steps"])


def find_unet_config(model: dict) -> Path | None:
    """The U-Net's config.json of ``model`` if it is on this machine now (no download)."""
    from .models import MissingModelError, ModelRef, resolve_model

    try:
        root = resolve_model(ModelRef.from_config("models.diffusion", model))
    except MissingModelError:
        return None
    path = root / "unet" / "config.json"
    return path if path.is_file() else None


def vae_shape(config: dict, unet_config: Path) -> tuple[int, int] | None:
    """(tokens, channels) of the VAE control's array, from the VAE's config.json beside the
    U-Net's; None when the control is off or the file is absent."""
    path = unet_config.parent.parent / "vae" / "config.json"
    if not config["controls"]["vae"]["enabled"] or not path.is_file():
        return None
    generation = config["generation"]
    tokens = (generation["height"] // LATENT_FACTOR) * (generation["width"] // LATENT_FACTOR)
    return tokens, json.loads(path.read_text())["block_out_channels"][-1]


def human(n_bytes: float) -> str:
    if abs(n_bytes) < 1000:
        return f"{n_bytes:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n_bytes /= 1000
        if abs(n_bytes) < 1000:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1000:.1f} TB"


def existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_free_space(results: str | Path, needed: int, factor: float, what: str) -> str:
    """Raise DiskSpaceError when ``needed * factor`` bytes exceed the free space at ``results``.

    Returns the line saying what was checked. ``what`` explains the estimate in the messages.
    """
    target = existing_ancestor(Path(results))
    free = shutil.disk_usage(target).free
    required = needed * factor
    if required > free:
        raise DiskSpaceError(
            f"not enough free space for '{results}': this run will write about {human(needed)} "
            f"({what}); with the safety factor {factor:g} that needs {human(required)}, but "
            f"the filesystem holding {target} has {human(free)} free. Free some space, point "
            "config key 'results' at a larger filesystem, or run anyway with config key "
            "'preflight.check_free_space': false (for one run: --configfile <your config> "
            "<a file holding 'preflight: {check_free_space: false}'>)"
        )
    return (
        f"free space: this run writes about {human(needed)} ({what}); "
        f"{human(free)} free at {target}"
    )


def store_words(config: dict) -> str:
    store = config["generation"]["store"]
    return store if isinstance(store, str) else "explicit"


def codec_words(codec: dict) -> str:
    scheme = codec.get("quantise", "none")
    return "float16" if scheme == "none" else scheme


def disk_preflight(config: dict, stores: list[str], labels: list[str]) -> str:
    """Check the space for the stores and label files in these lists that do not exist yet.

    Returns one line for the user: what was estimated, or why nothing was checked.
    """
    settings = config["preflight"]
    if not settings["check_free_space"]:
        return "free space: not checked (preflight.check_free_space is false)"
    unet_config = find_unet_config(config["models"]["diffusion"])
    if unet_config is None:
        return (
            "free space: not checked, the U-Net config of models.diffusion is not on this "
            "machine yet (this run builds or downloads it); the next run checks it"
        )
    unet = json.loads(unet_config.read_text())
    layers, n_calls = study_layers(config, unet)
    footprint = image_footprint(
        unet,
        config["generation"],
        stored_arrays(config, layers, n_calls, vae_shape(config, unet_config)),
    )
    images = sum(not os.path.exists(path) for path in stores)
    label_files = sum(not os.path.exists(path) for path in labels)
    needed = images * footprint.generation + label_files * footprint.labels_per_task
    what = (
        f"{images} images x {human(footprint.generation)}, of which activations "
        f"{human(footprint.activations)} (generation.store: {store_words(config)}, "
        f"{codec_words(config['generation']['codec'])}), and {label_files} label files x "
        f"{human(footprint.labels_per_task)}, uncompressed"
    )
    return check_free_space(config["results"], needed, settings["free_space_factor"], what)
