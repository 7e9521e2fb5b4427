"""The intervention's workflow jobs; scripts unpack ``snakemake.*`` and call these.

``intervene``: one (task, condition, image): every trial's edited image, its previews, its
target and the record of each edit, in one folder written atomically. ``score``: the task's
labeler on every trial's edited image, and the scores. ``summarise``: the tables.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..core.io import atomic_directory, atomic_file, write_csv, write_json
from ..core.provenance import VERSION_KEY, package_version
from .targets import IDENTITY, draw_offset, probe_units, translated_label, trial_rng

log = logging.getLogger("ldmprobe")

TARGET_FILE = "target.npz"
EDITS_FILE = "edits.csv"
COST_FILE = "cost.json"
SCORE_COLUMNS = ["prompt_id", "seed", "trial", "task", "condition", "offset_dy", "offset_dx"]
SCORE_COLUMNS += ["metric", "value"]


def trial_dir(folder: str | Path, trial: int) -> Path:
    return Path(folder) / f"trial{trial}"


def trials_of(condition: str, trials: int) -> int:
    """The identity target has one offset, so one trial shows all it can."""
    from .conditions import CONDITIONS

    return 1 if not CONDITIONS[condition].translate else trials


def load_condition_probes(
    condition: str, task: str, probes: dict[str, str], seed: int
) -> dict[tuple[str, int], object]:
    """The probe of each edited (layer, step) for ``condition``; ``probes`` maps
    "<layer>/<step>" to the probe file the condition reads (the trained or permuted cell)."""
    from .conditions import CONDITIONS, random_probe
    from .optimise import load_edit_probe

    chosen = {}
    for key, path in probes.items():
        layer, step = key.rsplit("/", 1)
        probe = load_edit_probe(path, task)
        if CONDITIONS[condition].probe == "random":
            probe = random_probe(probe, seed, layer, int(step))
        chosen[(layer, int(step))] = probe
    return chosen


def intervene(
    model: dict,
    allow_download: bool,
    generation: dict,
    intervention: dict,
    task: str,
    condition: str,
    image: dict,
    layers_path: str,
    label_path: str,
    probes: dict[str, str],
    out_dir: str,
) -> None:
    """``image``: prompt_id, seed, prompt. ``probes``: "<layer>/<step>" -> probe file."""
    import pandas as pd
    import torch

    from ..backbones import backbone_of
    from ..backbones.layers import Layer
    from ..core.provenance import png_info
    from ..core.tasks import TASKS
    from ..generation.generate import decode_latents
    from ..labels import load_label
    from ..models import ModelRef, load_diffusion_pipeline, resolve_device
    from .conditions import CONDITIONS
    from .edit import SITE_COLUMNS, ProbeEdit, generate_edited
    from .optimise import EditSettings

    kind = TASKS[task].kind
    ref = ModelRef.from_config("models.diffusion", model)
    device = resolve_device(generation["device"])
    started = time.perf_counter()
    pipe = load_diffusion_pipeline(
        ref, generation["scheduler"], generation["dtype"], device, allow_download, model["backbone"]
    )
    log.info(
        "pipeline %s loaded on %s in %.1f s", ref.describe(), device, time.perf_counter() - started
    )
    layers = [Layer(**entry) for entry in json.loads(Path(layers_path).read_text())["layers"]]
    chosen = load_condition_probes(condition, task, probes, intervention["seed"])
    label = load_label(label_path, keys=("target",))["target"]
    settings = EditSettings(lr=intervention["lr"], iterations=intervention["iterations"])
    translate = CONDITIONS[condition].translate
    height, width = label.shape
    costs = []
    with atomic_directory(out_dir) as tmp:
        for trial in range(trials_of(condition, intervention["trials"])):
            rng = trial_rng(intervention["seed"], image["prompt_id"], int(image["seed"]), trial)
            # Every condition draws the same offset for a trial, so conditions pair by trial.
            offset = draw_offset(rng, height, width)
            if not translate:
                offset = IDENTITY
            target = translated_label(kind, label, offset)

            def in_units(probe, target=target):
                return probe_units(
                    kind, target, intervention["depth_target"], probe.target_mean, probe.target_std
                )

            edit = ProbeEdit(chosen, in_units, settings)
            started = time.perf_counter()
            edited = generate_edited(
                pipe, image["prompt"], int(image["seed"]), generation, layers, edit
            )
            seconds = time.perf_counter() - started
            folder = trial_dir(tmp, trial)
            (folder / "previews" / "x0").mkdir(parents=True)
            edited.image.save(folder / "image.png", format="PNG", pnginfo=png_info())
            for step, preview in enumerate(decode_latents(backbone_of(pipe), pipe, edited.x0)):
                preview.save(folder / "previews" / "x0" / f"step{step:03d}.png", pnginfo=png_info())
            with open(folder / TARGET_FILE, "wb") as handle:
                np.savez(
                    handle,
                    target=target,
                    offset=np.array([offset.dy, offset.dx]),
                    **{VERSION_KEY: np.array(package_version())},
                )
            write_csv(folder / EDITS_FILE, pd.DataFrame(edit.sites, columns=SITE_COLUMNS))
            costs.append(
                {
                    "trial": trial,
                    "seconds": seconds,
                    "denoiser_calls": edited.calls,
                    "edited_sites": len(edit.sites),
                    "optimiser_steps": sum(site["iterations"] for site in edit.sites),
                }
            )
            log.info(
                "trial %d (offset %d, %d): %d sites edited in %.1f s",
                trial,
                offset.dy,
                offset.dx,
                len(edit.sites),
                seconds,
            )
        write_json(
            Path(tmp) / COST_FILE,
            {"device": device, "torch": torch.__version__, "trials": costs},
        )


def depth2img(
    model: dict,
    allow_download: bool,
    generation: dict,
    intervention: dict,
    task: str,
    image: dict,
    original_image: str,
    label_path: str,
    out_dir: str,
) -> None:
    """The depth2img condition of one image: per trial, the original image re-generated by
    Stable Diffusion 2 depth (``model``: config ``intervention.depth2img.model``) with the
    trial's translated target as its depth map, the same prompt and seed. Written like an
    edit's folder, less the edits (there are none) and the previews; a trial whose target is
    flat (``depth_condition``) is left out and recorded as skipped in cost.json."""
    import torch
    from PIL import Image

    from ..core.provenance import png_info
    from ..core.tasks import TASKS
    from ..labels import load_label
    from ..models import ModelRef, load_depth2img_pipeline, resolve_device
    from .conditions import DEPTH2IMG
    from .targets import depth_condition

    settings = intervention["depth2img"]
    kind = TASKS[task].kind
    ref = ModelRef.from_config("intervention.depth2img.model", model)
    device = resolve_device(generation["device"])
    started = time.perf_counter()
    pipe = load_depth2img_pipeline(
        ref, generation["dtype"], device, allow_download, settings["scheduler"]
    )
    log.info(
        "pipeline %s loaded on %s in %.1f s", ref.describe(), device, time.perf_counter() - started
    )
    label = load_label(label_path, keys=("target",))["target"]
    original = Image.open(original_image).convert("RGB")
    steps = settings["steps"] if settings["steps"] is not None else generation["steps"]
    guidance = settings["guidance_scale"]
    guidance = guidance if guidance is not None else generation["guidance_scale"]
    height, width = label.shape
    costs = []
    with atomic_directory(out_dir) as tmp:
        for trial in range(trials_of(DEPTH2IMG, intervention["trials"])):
            rng = trial_rng(intervention["seed"], image["prompt_id"], int(image["seed"]), trial)
            offset = draw_offset(rng, height, width)  # the probe edit's offset of this trial
            target = translated_label(kind, label, offset)
            condition = depth_condition(kind, target)
            if condition is None:
                log.warning("trial %d: flat target, nothing to condition on; left out", trial)
                costs.append({"trial": trial, "skipped": "flat target"})
                continue
            calls = []

            def count(pipe, step, timestep, kwargs, calls=calls):
                calls.append(step)
                return {}

            started = time.perf_counter()
            result = pipe(
                prompt=image["prompt"],
                image=original,
                depth_map=torch.from_numpy(condition)[None],
                strength=settings["strength"],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(int(image["seed"])),
                callback_on_step_end=count,
            )
            seconds = time.perf_counter() - started
            folder = trial_dir(tmp, trial)
            folder.mkdir(parents=True)
            result.images[0].save(folder / "image.png", format="PNG", pnginfo=png_info())
            with open(folder / TARGET_FILE, "wb") as handle:
                np.savez(
                    handle,
                    target=target,
                    offset=np.array([offset.dy, offset.dx]),
                    **{VERSION_KEY: np.array(package_version())},
                )
            costs.append(
                {
                    "trial": trial,
                    "seconds": seconds,
                    "denoiser_calls": len(calls),
                    "edited_sites": 0,
                    "optimiser_steps": 0,
                }
            )
            log.info(
                "trial %d (offset %d, %d): re-generated in %d steps, %.1f s",
                trial,
                offset.dy,
                offset.dx,
                len(calls),
                seconds,
            )
        write_json(
            Path(tmp) / COST_FILE,
            {
                "device": device,
                "torch": torch.__version__,
                "model": ref.describe(),
                "trials": costs,
            },
        )


def score(
    task: str,
    task_config: dict,
    allow_download: bool,
    device: str,
    intervention: dict,
    condition: str,
    image: dict,
    original_image: str,
    label_path: str,
    edited_dir: str,
    scores_path: str,
    maps_path: str,
) -> None:
    """The task's labeler on every trial's edited image; per-edit scores (tidy rows) and the
    edited images' maps (``maps_path``: ``target`` [trials, H, W], for the figures)."""
    import pandas as pd
    from PIL import Image

    from ..core.metrics import psnr
    from ..core.tasks import TASKS
    from ..labels import build_labeler, label_model_ref, load_label, to_target
    from ..models import resolve_device
    from .scores import SUCCESS_SCORE, TASK_SCORES, relative_edit
    from .targets import Offset

    kind = TASKS[task].kind
    options = task_config.get("options", {})
    labeler = build_labeler(
        task_config["labeler"],
        label_model_ref(task, task_config),
        resolve_device(device),
        allow_download,
        options,
    )
    original = load_label(label_path, keys=("target",))["target"]
    if kind == "binary":
        original = original > 0.5
    before = np.asarray(Image.open(original_image).convert("RGB"))
    trials = sorted(Path(edited_dir).glob("trial*"), key=lambda p: int(p.name[5:]))
    pictures = [Image.open(folder / "image.png").convert("RGB") for folder in trials]
    if pictures:
        raw = labeler.predict(pictures)
        maps = to_target(TASKS[task], np.stack(raw), {**labeler.settings, **options})
    else:  # every trial left out (depth2img on flat targets)
        maps = np.zeros((0, *original.shape), np.float32)
    rows = []
    for folder, picture, edited in zip(trials, pictures, maps, strict=True):
        trial = int(folder.name[5:])
        with np.load(folder / TARGET_FILE) as data:
            offset = Offset(*(int(v) for v in data["offset"]))
        values = TASK_SCORES[kind](original, edited > 0.5 if kind == "binary" else edited, offset)
        values["psnr"] = psnr(before, np.asarray(picture))
        if (folder / EDITS_FILE).is_file():
            sites = pd.read_csv(folder / EDITS_FILE)
            values["relative_edit"] = (
                relative_edit(sites["delta_squares"].sum(), sites["activation_squares"].sum())
                if len(sites)
                else 0.0
            )
        else:  # no activation edit (depth2img): ||Δ|| / ||a|| is undefined
            values["relative_edit"] = np.nan
        success = values[SUCCESS_SCORE[kind]]
        threshold = intervention["success"][SUCCESS_SCORE[kind]]
        values["success"] = float(success >= threshold) if np.isfinite(success) else np.nan
        for metric, value in values.items():
            rows.append(
                {
                    "prompt_id": image["prompt_id"],
                    "seed": int(image["seed"]),
                    "trial": trial,
                    "task": task,
                    "condition": condition,
                    "offset_dy": offset.dy,
                    "offset_dx": offset.dx,
                    "metric": metric,
                    "value": value,
                }
            )
    write_csv(scores_path, pd.DataFrame(rows, columns=SCORE_COLUMNS))
    with atomic_file(maps_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            target=maps.astype(np.float32),
            **{VERSION_KEY: np.array(package_version())},
        )
    log.info("scored %d trials of %s under %s", len(trials), image["prompt_id"], condition)


def summarise(scores: list[str], metrics_config: dict, edits_path: str, summary_path: str):
    import pandas as pd

    from .summary import summarise_edits

    edits = pd.concat(
        [pd.read_csv(path, dtype={"prompt_id": str}) for path in scores], ignore_index=True
    )
    write_csv(edits_path, edits)
    summary = summarise_edits(edits, metrics_config)
    write_csv(summary_path, summary)
    log.info(
        "%d edits, %d summary rows",
        edits[["prompt_id", "seed", "trial", "condition"]].drop_duplicates().shape[0],
        len(summary),
    )


def figures(edits_path: str, task: str, success: dict, distributions_path: str, success_path: str):
    import pandas as pd

    from . import figures as plots

    edits = pd.read_csv(edits_path, dtype={"prompt_id": str})
    plots.distributions(edits, task, distributions_path)
    threshold = success[plots.SUCCESS_OF[task]]
    plots.success_vs_edit(edits, task, threshold, success_path)


def examples(
    task: str,
    conditions: list[str],
    images: list,
    edited: list[str],
    maps: list[str],
    originals: list[str],
    steps: list[int],
    out_path: str,
) -> None:
    """``edited`` and ``maps``: per condition, per image (the rule's order); the first trial
    shown (trial 0, unless depth2img left it out). A condition without previews (depth2img)
    shows blank preview panels; one without any trial is left out."""
    from PIL import Image

    from . import figures as plots

    found = []
    calls = None
    for number, condition in enumerate(conditions):
        for index, (prompt_id, seed) in enumerate(images):
            folders = sorted(
                Path(edited[number * len(images) + index]).glob("trial*"),
                key=lambda p: int(p.name[5:]),
            )
            if not folders:
                log.warning("%s of %s s%s: no trial to show", condition, prompt_id, seed)
                continue
            previews = sorted((folders[0] / "previews" / "x0").glob("step*.png"))
            if previews:
                calls = len(previews)
            found.append((number, index, condition, prompt_id, seed, folders[0], previews))
    shown = plots.preview_steps(steps, calls) if calls else []
    rows = []
    for number, index, condition, prompt_id, seed, folder, previews in found:
        original = np.asarray(Image.open(originals[index]).convert("RGB"))
        with np.load(folder / TARGET_FILE) as data:
            target = data["target"]
        with np.load(maps[number * len(images) + index]) as data:
            labelled = data["target"][0]
        if previews:
            pictures = [np.asarray(Image.open(previews[s]).convert("RGB")) for s in shown]
        else:
            pictures = [np.full_like(original, 255) for _ in shown]
        rows.append(
            {
                "title": f"{prompt_id} s{seed}\n{condition}",
                "original": original,
                "target": target,
                "edited": np.asarray(Image.open(folder / "image.png").convert("RGB")),
                "labelled": labelled,
                "previews": pictures,
            }
        )
    plots.example_grid(rows, shown, task, out_path)
