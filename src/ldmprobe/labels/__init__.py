"""Labels: off-the-shelf models that turn an image into a per-pixel map, and probe targets.

Labelers are plugins registered by name (``ldmprobe.labels.labelers``: each model's loading code and
output convention). The task decides how a labeler's raw map becomes a probe target
(``to_target``, by the task's kind in ``ldmprobe.core.tasks``): saliency maps are binarised, depth
and shading stay continuous.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from ..core.config import ConfigError
from ..core.io import atomic_file, rerun_advice
from ..core.provenance import VERSION_KEY, package_version
from ..core.tasks import Task
from ..models import ModelRef
from .labelers import LABELERS, Labeler, LabelerUnavailable, model_ref

log = logging.getLogger(__name__)


def labeler_sections(task: str, section: dict) -> list[tuple[str, dict]]:
    """(config key, section with ``labeler``, ``model``, ``options``) of each labeler of
    ``labels.tasks.<task>``: the task's own and, when set, the one of its previews."""
    sections = [(f"labels.tasks.{task}", section)]
    if section.get("previews"):
        sections.append((f"labels.tasks.{task}.previews", section["previews"]))
    return sections


def label_model_ref(task: str, section: dict, previews: bool = False) -> ModelRef:
    """The model of ``labels.tasks.<task>`` (of its ``previews`` labeler with ``previews``),
    with the files its labeler reads from the folder."""
    key = f"labels.tasks.{task}"
    if previews:
        key, section = f"{key}.previews", section["previews"]
    return model_ref(
        f"{key}.model", section["labeler"], section["model"], section.get("options", {})
    )


def task_reads_record(task: str, section: dict) -> bool:
    """Whether the label jobs of ``labels.tasks.<task>`` read each image's generation record
    (its ``meta.json``): when its labeler or its previews' labeler labels by it
    (``Labeler.reads_record``). At parse time: light."""
    return any(
        LABELERS[part["labeler"]].reads_record(
            {**LABELERS[part["labeler"]].options, **part.get("options", {})}
        )
        for _key, part in labeler_sections(task, section)
        if part["labeler"] in LABELERS
    )


def check_labelers(tasks: dict) -> None:
    """At parse time: every labeler's options exist and its optional packages are installed.

    Raises ConfigError naming the config key (labeler names and tasks are checked beside the
    other cross-key rules in ``ldmprobe.preflight``).
    """
    problems = []
    for task, task_section in tasks.items():
        for key, section in labeler_sections(task, task_section):
            factory = LABELERS.get(section["labeler"])
            if factory is None:
                continue
            try:
                factory.configure(section.get("options", {}))
                factory.require()
            except (ValueError, LabelerUnavailable) as error:
                problems.append(f"config key '{key}': {error}")
    if problems:
        raise ConfigError("\n".join(problems))


def to_target(task: Task, raw: np.ndarray, options: dict) -> np.ndarray:
    """The probe target of a raw labeler map (REFERENCE.md: saliency foreground is > 0).

    NaN (no label: a labeler that could not label the image) stays NaN."""
    if task.kind == "binary":
        foreground = (raw > float(options.get("threshold", 0.0))).astype(np.float32)
        return np.where(np.isnan(raw), np.float32(np.nan), foreground)
    normalise = options.get("normalise", "none")
    if normalise == "none":
        return raw.astype(np.float32)
    axes = tuple(range(raw.ndim - 2, raw.ndim))
    if normalise == "minmax":
        low = raw.min(axis=axes, keepdims=True)
        span = raw.max(axis=axes, keepdims=True) - low
        return ((raw - low) / np.where(span > 0, span, 1)).astype(np.float32)
    if normalise == "standard":
        std = raw.std(axis=axes, keepdims=True)
        return ((raw - raw.mean(axis=axes, keepdims=True)) / np.where(std > 0, std, 1)).astype(
            np.float32
        )
    raise ValueError(f"unknown normalise option {normalise!r}")


def build_labeler(
    name: str, ref: ModelRef, device: str, allow_download: bool, options: dict
) -> Labeler:
    if name not in LABELERS:
        raise ValueError(f"unknown labeler {name!r}; known: {sorted(LABELERS)}")
    return LABELERS[name](ref, device=device, allow_download=allow_download, **options)


def reads_record(labeler: Labeler) -> bool:
    """Whether ``labeler`` labels images from their generation's record (``Labeler.reads_record``;
    False for an object with ``predict`` alone)."""
    reads = getattr(labeler, "reads_record", None)
    return reads is not None and reads(labeler.settings)


def predict_paths(
    labeler: Labeler, paths: list[Path], batch_size: int, record: dict | None = None
) -> list[np.ndarray]:
    """The labeler's raw map of each image file, ``batch_size`` images at a time; a labeler
    that ``reads_record`` gets the files and the generation's ``record`` of them at once."""
    from PIL import Image

    if reads_record(labeler):
        raw = labeler.predict_files(paths, record)
        log.info("labelled %d images from their generation's record", len(paths))
        return raw
    raw = []
    for start in range(0, len(paths), batch_size):
        batch = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
        raw.extend(labeler.predict(batch))
        log.info("labelled %d/%d images", min(start + batch_size, len(paths)), len(paths))
    return raw


def label_image(
    labeler: Labeler,
    task: Task,
    options: dict,
    image_path: Path,
    preview_paths: list[Path],
    out_path: Path,
    provenance: dict,
    batch_size: int = 8,
    previews: tuple[Labeler, dict, dict] | None = None,
    record: dict | None = None,
) -> None:
    """Label the final image and each step's preview; one .npz with targets and raw maps.

    ``provenance`` (the model id and revision) is stored as JSON beside the maps, with the
    labeler's own record (the resolved folder, the options in effect) and whether the image is
    ``excluded``: the labeler gave no label for the final image (an all-NaN map, as the world's
    exact labeler does when its fit fails). The manifest leaves excluded images out of every
    split (``ldmprobe.probing.dataset``). A preview without a label keeps its NaN map.

    ``previews``: (labeler, options, provenance) of ``labels.tasks.<task>.previews``, which then
    labels the previews instead (recorded under the provenance's ``previews``); None: the
    task's labeler labels them, with the final image.

    ``record``: the generation's record of the image (its ``meta.json``), for a labeler that
    labels by it (``Labeler.reads_record``); the others ignore it.
    """
    if previews is None:
        raw = predict_paths(labeler, [image_path, *preview_paths], batch_size, record)
        final_raw, preview_maps = raw[0], raw[1:]
        preview_labeler, preview_options = labeler, options
    else:
        preview_labeler, preview_options, preview_provenance = previews
        final_raw = predict_paths(labeler, [image_path], batch_size, record)[0]
        preview_maps = predict_paths(preview_labeler, preview_paths, batch_size, record)
    preview_raw = (
        np.stack(preview_maps) if preview_maps else np.zeros((0, *final_raw.shape), np.float32)
    )
    target_options = {**labeler.settings, **options}
    excluded = bool(np.isnan(final_raw).all())
    if excluded:
        log.info("%s: no label from the labeler; the image is excluded", image_path)
    record = {
        **provenance,
        "labeler_info": labeler.info,
        "excluded": excluded,
        VERSION_KEY: package_version(),
    }
    if previews is not None:
        record["previews"] = {**preview_provenance, "labeler_info": preview_labeler.info}
    with atomic_file(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            target=to_target(task, final_raw, target_options),
            raw=final_raw,
            preview_target=to_target(
                task, preview_raw, {**preview_labeler.settings, **preview_options}
            ),
            preview_raw=preview_raw,
            provenance=np.array(json.dumps(record, sort_keys=True, default=str)),
        )


def load_provenance(path: str | Path) -> dict:
    with np.load(Path(path), allow_pickle=False) as data:
        return json.loads(str(data["provenance"]))


def is_excluded(path: str | Path) -> bool:
    """Whether the label file says its image got no label (``label_image``)."""
    return bool(load_provenance(path).get("excluded", False))


LABEL_ARRAYS = ("target", "raw", "preview_target", "preview_raw")


def load_label(
    path: str | Path, producer: str = "label", keys: tuple[str, ...] = LABEL_ARRAYS
) -> dict[str, np.ndarray]:
    """The label file's ``keys`` arrays (each read only when asked: a file holds every
    preview's maps too)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise RuntimeError(
            f"label file {path} is missing or corrupt ({error}); {rerun_advice(path, producer)}"
        ) from error
