"""Checks made when the Snakefile is parsed, before any job: what the schema cannot say.

Everything here reads small files only (the config, the denoiser's ``config.json``, ``stat`` of
output paths), never torch, because it runs at parse time.

* :func:`check_consistency`: keys that are valid alone but not together (a labeler that does not
  exist or does not make that task's labels, a probed CFG half that generation does not store).
* :func:`disk_preflight`: the bytes the run will still write, estimated by the backbone adapter
  from the denoiser's config (activations dominate), against the free space of the results
  filesystem.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .backbones import Estimate, get_backbone
from .config import ConfigError

FILE_OVERHEAD = 4096  # headers of one PNG or npz file, rounded up


class DiskSpaceError(RuntimeError):
    """The results filesystem cannot hold what the run will write; the message says what to do."""


def check_consistency(config: dict) -> None:
    """Raise ConfigError naming the key when settings contradict each other (validated config)."""
    from .labels import LABELERS

    try:
        backbone = get_backbone(config["models"]["diffusion"]["backbone"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
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
    held = backbone.batch_halves(generation["guidance_scale"])
    if "uncond" in stored and "uncond" not in held:
        raise ConfigError(
            f"config key 'generation.cfg_half': {generation['cfg_half']!r} needs the "
            f"unconditional half, but {backbone.no_uncond_reason(generation['guidance_scale'])}; "
            f"allowed: {list(held)}"
        )


def unet_calls(scheduler: str, steps: int) -> int:
    """U-Net calls of a schedule: PNDM without PRK steps repeats one timestep (REFERENCE.md)."""
    return steps + 1 if scheduler == "pndm" else steps


@dataclass(frozen=True)
class ImageFootprint:
    """Bytes one image writes, uncompressed: an upper bound for the compressed files."""

    activations: int  # float16, every layer, every U-Net call, every stored CFG half
    latents: int  # float32 x_t and x0 of every call
    pictures: int  # final image and previews as raw RGB (PNG never grows much past raw)
    labels_per_task: int  # float32 target and raw map of the image and of each x0 preview

    @property
    def generation(self) -> int:
        return self.activations + self.latents + self.pictures


def image_footprint(estimate: Estimate, generation: dict) -> ImageFootprint:
    """What one generation job and one label job per task write, for the ``generation`` config;
    ``estimate``: the backbone's, at the configured image size."""
    height, width = generation["height"], generation["width"]
    calls = unet_calls(generation["scheduler"], generation["steps"])
    halves = 2 if generation["cfg_half"] == "both" else 1
    values_per_call = sum(t * c for t, c in estimate.layers)
    latent_values = math.prod(estimate.latent)
    kinds = generation["previews"]
    labelled_previews = calls if "x0" in kinds else 0
    return ImageFootprint(
        activations=values_per_call * calls * halves * 2,
        latents=2 * calls * latent_values * 4,
        pictures=(1 + calls * len(kinds)) * (height * width * 3 + FILE_OVERHEAD),
        labels_per_task=2 * (1 + labelled_previews) * height * width * 4 + FILE_OVERHEAD,
    )


def denoiser_config(model: dict) -> dict | None:
    """The denoiser's config of ``model`` if it is on this machine now (no download)."""
    from .models import MissingModelError, ModelRef, resolve_model

    try:
        root = resolve_model(ModelRef.from_config("models.diffusion", model))
    except MissingModelError:
        return None
    return get_backbone(model["backbone"]).denoiser_config(root)


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


def disk_preflight(config: dict, stores: list[str], labels: list[str]) -> str:
    """Check the space for the stores and label files in these lists that do not exist yet.

    Returns one line for the user: what was estimated, or why nothing was checked.
    """
    settings = config["preflight"]
    if not settings["check_free_space"]:
        return "free space: not checked (preflight.check_free_space is false)"
    model, generation = config["models"]["diffusion"], config["generation"]
    denoiser = denoiser_config(model)
    if denoiser is None:
        return (
            "free space: not checked, the denoiser config of models.diffusion is not on this "
            "machine yet (this run builds or downloads it); the next run checks it"
        )
    estimate = get_backbone(model["backbone"]).estimate(
        denoiser, generation["height"], generation["width"]
    )
    footprint = image_footprint(estimate, generation)
    images = sum(not os.path.exists(path) for path in stores)
    label_files = sum(not os.path.exists(path) for path in labels)
    needed = images * footprint.generation + label_files * footprint.labels_per_task
    what = (
        f"{images} images x {human(footprint.generation)}, of which activations "
        f"{human(footprint.activations)}, and {label_files} label files x "
        f"{human(footprint.labels_per_task)}, uncompressed"
    )
    return check_free_space(config["results"], needed, settings["free_space_factor"], what)
