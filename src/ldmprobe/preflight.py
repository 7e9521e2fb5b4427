"""Checks made when the Snakefile is parsed, before any job: what the schema cannot say.

Everything here reads small files only (the config, the denoiser's ``config.json``, ``stat`` of
output paths), never torch, because it runs at parse time.

* :func:`check_consistency`: keys that are valid alone but not together (a labeler that does not
  exist or does not make that task's labels, a probed CFG half that generation does not store).
* :func:`check_store`: every probe cell, control and the intervention read what
  ``generation.store`` keeps.
* :func:`disk_preflight`: the bytes the run will still write, estimated by the backbone adapter
  from the denoiser's config (activations dominate) for the stored layers and steps and the
  codec, against the free space of the results filesystem.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .backbones import Estimate, get_backbone
from .backbones.layers import Layer, select_layers
from .core.config import ConfigError
from .generation.reads import check_stored, store_plan
from .generation.sources import PERMUTED, VAE

FLOW_SCHEDULER = "flow-euler"  # the flow-matching families' sampler (models.SCHEDULERS)
FILE_OVERHEAD = 4096  # headers of one PNG or npz file, rounded up


class DiskSpaceError(RuntimeError):
    """The results filesystem cannot hold what the run will write; the message says what to do."""


def check_consistency(config: dict) -> None:
    """Raise ConfigError naming the key when settings contradict each other (validated config)."""
    from .labels import LABELERS, labeler_sections

    try:
        backbone = get_backbone(config["models"]["diffusion"]["backbone"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    start_kind = config["generation"]["start"]["kind"]
    for task, task_section in config["labels"]["tasks"].items():
        for section_key, section in labeler_sections(task, task_section):
            key = f"{section_key}.labeler"
            name = section["labeler"]
            if name not in LABELERS:
                raise ConfigError(
                    f"config key '{key}': {name!r} is not a known labeler; allowed: "
                    f"{sorted(LABELERS)}"
                )
            makes = getattr(LABELERS[name], "tasks", ())
            if makes and task not in makes:
                allowed = sorted(n for n, f in LABELERS.items() if task in getattr(f, "tasks", ()))
                raise ConfigError(
                    f"config key '{key}': labeler {name!r} makes {list(makes)} labels, not "
                    f"{task}; allowed for {task}: {allowed}"
                )
            # Unknown options are check_labelers' to report; here the defaults fill them in.
            settings = {**LABELERS[name].options, **section.get("options", {})}
            needs = LABELERS[name].required_start(settings)
            if needs is not None and needs != start_kind:
                raise ConfigError(
                    f"config key '{section_key}.options': labeler {name!r} with options "
                    f"{section.get('options', {})} labels images generated from "
                    f"generation.start {needs!r}, but generation.start.kind is {start_kind!r}; "
                    f"allowed: [{needs!r}]"
                )
    generation = config["generation"]
    if generation["start"]["kind"] == "world-inversion" and generation["scheduler"] != "ddim":
        raise ConfigError(
            f"config key 'generation.scheduler': {generation['scheduler']!r}, but "
            "generation.start world-inversion retraces DDIM's steps; allowed: ['ddim']"
        )
    stored = ["uncond", "cond"] if generation["cfg_half"] == "both" else [generation["cfg_half"]]
    probed = config["probe"]["cfg_half"]
    if probed not in stored:
        raise ConfigError(
            f"config key 'probe.cfg_half': {probed!r} is not stored, generation.cfg_half is "
            f"{generation['cfg_half']!r}; allowed: {stored} (or set generation.cfg_half: both)"
        )
    flow = generation["scheduler"] == FLOW_SCHEDULER
    if flow != backbone.flow_matching:
        allowed = [FLOW_SCHEDULER] if backbone.flow_matching else "any but " + FLOW_SCHEDULER
        raise ConfigError(
            f"config key 'generation.scheduler': {generation['scheduler']!r} does not fit the "
            f"{backbone.name} backbone, trained for "
            f"{'flow matching' if backbone.flow_matching else 'noise prediction'}; "
            f"allowed: {allowed}"
        )
    held = backbone.batch_halves(generation["guidance_scale"])
    if "uncond" in stored and "uncond" not in held:
        raise ConfigError(
            f"config key 'generation.cfg_half': {generation['cfg_half']!r} needs the "
            f"unconditional half, but {backbone.no_uncond_reason(generation['guidance_scale'])}; "
            f"allowed: {list(held)}"
        )


def check_store(config: dict) -> None:
    """Raise ConfigError when a reader asks for a layer or step ``generation.store`` leaves
    out (``reads.check_stored``), from the layer table the backbone's config-only estimate
    names; when the model is not on this machine yet (the demo builds it) or the adapter
    names no layers without torch, the probe grid makes the same check once the layer table
    exists."""
    table = study_table(config)
    if table is not None:
        generation = config["generation"]
        check_stored(config, table, unet_calls(generation["scheduler"], generation["steps"]))


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
    per_half: bool  # one array per stored CFG half (the denoiser's) or one (the VAE's)


def value_bytes(codec: dict, tokens: int, channels: int) -> float:
    """Bytes per stored activation value, uncompressed, with its share of the scales."""
    scheme = codec.get("quantise", "none")
    if scheme == "int8-token":
        return 1 + 2 / channels
    if scheme == "int8-channel":
        return 1 + 2 / tokens
    return 2


def stored_arrays(
    config: dict, estimate: Estimate, n_calls: int, vae_channels: int | None
) -> list[StoredArray]:
    """The activation arrays generation writes for ``config`` (``generation.store``), from
    the backbone's estimate: its named layer table where it has one, else every layer (an
    upper bound). The VAE control's array (``vae_channels`` wide, when known) sits on the
    latent grid."""
    plan = store_plan(config)
    permuted = config["controls"][PERMUTED.control]
    table = estimate.table
    arrays = []
    for role, selection in plan.items():
        steps = len(selection.resolve_steps(n_calls))
        if role == VAE.role:
            if vae_channels is not None:
                tokens = math.prod(estimate.latent[1:])
                arrays.append(StoredArray(tokens, vae_channels, steps, per_half=False))
            continue
        if table is None:
            arrays += [StoredArray(t, c, steps, per_half=True) for t, c in estimate.layers]
            continue
        chosen = set(selection.resolve_layers(table))
        if role == PERMUTED.role:
            patterns = permuted["layers"] or config["probe"]["layers"]
            chosen &= {layer.name for layer in select_layers(table, patterns)}
        arrays += [
            StoredArray(layer.height * layer.width, layer.channels, steps, per_half=True)
            for layer in table
            if layer.name in chosen
        ]
    return arrays


def image_footprint(
    estimate: Estimate, generation: dict, arrays: list[StoredArray] | None = None
) -> ImageFootprint:
    """What one generation job and one label job per task write, for the ``generation`` config;
    ``estimate``: the backbone's, at the configured image size; ``arrays``: the activation
    arrays stored (``stored_arrays``; default: every layer at every step)."""
    height, width = generation["height"], generation["width"]
    calls = unet_calls(generation["scheduler"], generation["steps"])
    halves = 2 if generation["cfg_half"] == "both" else 1
    if arrays is None:
        arrays = [StoredArray(t, c, calls, per_half=True) for t, c in estimate.layers]
    codec = generation.get("codec", {})
    activations = sum(
        array.tokens
        * array.channels
        * array.steps
        * (halves if array.per_half else 1)
        * value_bytes(codec, array.tokens, array.channels)
        for array in arrays
    )
    latent_values = math.prod(estimate.latent)
    kinds = generation["previews"]
    labelled_previews = calls if "x0" in kinds else 0
    return ImageFootprint(
        activations=round(activations),
        latents=2 * calls * latent_values * 4,
        pictures=(1 + calls * len(kinds)) * (height * width * 3 + FILE_OVERHEAD),
        labels_per_task=2 * (1 + labelled_previews) * height * width * 4 + FILE_OVERHEAD,
    )


def study_estimate(config: dict) -> Estimate | None:
    """The backbone's config-only estimate at the configured size (None: no model here yet)."""
    model, generation = config["models"]["diffusion"], config["generation"]
    root = model_root(model)
    if root is None:
        return None
    return get_backbone(model["backbone"]).estimate(
        get_backbone(model["backbone"]).denoiser_config(root),
        generation["height"],
        generation["width"],
    )


def study_table(config: dict) -> list[Layer] | None:
    """The denoiser's named layer table at the configured size, where the adapter gives one."""
    estimate = study_estimate(config)
    return None if estimate is None else estimate.table


def model_root(model: dict) -> Path | None:
    """The folder of ``model`` if it is on this machine now (no download)."""
    from .models import MissingModelError, ModelRef, resolve_model

    try:
        return resolve_model(ModelRef.from_config("models.diffusion", model))
    except MissingModelError:
        return None


def vae_channels(config: dict) -> int | None:
    """Channels of the VAE control's array (the decoder's widest, where its mid block runs),
    from the VAE's config.json; None when the control is off or the file is absent."""
    root = model_root(config["models"]["diffusion"])
    path = None if root is None else root / "vae" / "config.json"
    if not config["controls"][VAE.control]["enabled"] or path is None or not path.is_file():
        return None
    return json.loads(path.read_text())["block_out_channels"][-1]


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
    generation = config["generation"]
    estimate = study_estimate(config)
    if estimate is None:
        return (
            "free space: not checked, the denoiser config of models.diffusion is not on this "
            "machine yet (this run builds or downloads it); the next run checks it"
        )
    n_calls = unet_calls(generation["scheduler"], generation["steps"])
    footprint = image_footprint(
        estimate, generation, stored_arrays(config, estimate, n_calls, vae_channels(config))
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
