"""When does an ImageNet classifier see the prompted object? VGG-16 over the denoising steps.

The UCSD study's second experiment. Images of prompts that name ImageNet classes
(``prompts``) are generated with the study's settings; every step's decoded preview
(the x0 prediction ``x0`` and the noisy latent ``xt``) and the final image go through an
ImageNet-1k classifier loaded with timm (``vgg16.tv_in1k``) and preprocessed with the model's own
data config. This module holds the classifier and the jobs; the tables are ``stats``, the
figures ``figures``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.io import write_csv
from .figures import emergence_groups, first_correct_figure, topk_figure
from .prompts import IMAGENET, class_list
from .stats import (
    FINAL,
    criteria,
    curves_table,
    final_table,
    first_correct_table,
    summary_table,
    top_k_table,
)

log = logging.getLogger(__name__)


# --- the classifier ----------------------------------------------------------------------------


@dataclass
class Classifier:
    """A timm ImageNet-1k classifier with its own preprocessing and the class ids and names."""

    model: object
    transform: object
    data_config: dict
    class_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    device: str

    def probabilities(self, images: Sequence, batch_size: int = 16) -> np.ndarray:
        """Softmax probabilities [n images, n classes] (float32) of PIL images."""
        import torch

        batches = []
        for start in range(0, len(images), batch_size):
            pixels = torch.stack(
                [
                    self.transform(image.convert("RGB"))
                    for image in images[start : start + batch_size]
                ]
            )
            with torch.inference_mode():
                logits = self.model(pixels.to(self.device))
            batches.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        if not batches:
            return np.zeros((0, len(self.class_ids)), dtype=np.float32)
        return np.concatenate(batches)


def load_classifier(
    ref, device: str = "cpu", allow_download: bool = False, classes: str = IMAGENET
) -> Classifier:
    """Load a timm classifier saved in the Hugging Face hub layout (config.json + weights).

    ``ref.id`` is a local directory or a hub id such as ``timm/vgg16.tv_in1k`` looked up in the
    Hugging Face cache (offline unless ``allow_download``); either way timm loads it from that
    directory (``local-dir:``), preferring ``model.safetensors`` and reading pickled checkpoints
    only with ``weights_only=True``. Preprocessing comes from the model's pretrained config.
    """
    from ..core.compat import ensure_torchvision_importable
    from ..models import resolve_model

    ensure_torchvision_importable()
    import timm
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    path = resolve_model(ref, allow_download)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"config key '{ref.key}': {path} has no config.json, so it is not a timm model "
            "folder; save one with timm.models.save_for_hf or use the hub layout of "
            "timm/vgg16.tv_in1k"
        )
    model = timm.create_model(f"local-dir:{path}", pretrained=True)
    data_config = resolve_data_config({}, model=model)
    transform = create_transform(**data_config, is_training=False)
    if classes != IMAGENET:
        # The model declares its classes (save_for_hf's label_names); they must be the list's.
        ids, names = class_list(classes)
        declared = tuple(model.pretrained_cfg.get("label_names") or ())
        if declared != ids:
            raise ValueError(
                f"config key '{ref.key}': {ref.describe()} predicts classes {list(declared)}, "
                f"not the {classes} class list {list(ids)} (classification.classes)"
            )
        return Classifier(model.eval().to(device), transform, data_config, ids, names, device)
    info = ImageNetInfo()
    if model.num_classes != info.num_classes():
        raise ValueError(
            f"config key '{ref.key}': {ref.describe()} has {model.num_classes} classes; the "
            f"experiment needs an ImageNet-1k classifier ({info.num_classes()} classes)"
        )
    return Classifier(
        model=model.eval().to(device),
        transform=transform,
        data_config=data_config,
        class_ids=tuple(info.label_names()),
        class_names=tuple(info.index_to_description(i) for i in range(info.num_classes())),
        device=device,
    )


def classify_generation(
    classifier: Classifier,
    image: Path,
    previews: Path,
    meta: Path,
    kinds: Sequence[str],
    target: int,
    top_k: int,
    batch_size: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-k table and curves table of one generated image: every preview of ``kinds`` and the
    final image. Both carry the step's timestep (empty for the final image)."""
    import json

    from PIL import Image

    info = json.loads(Path(meta).read_text())
    n_calls, timesteps = info["unet_calls"], info["timesteps"]
    rows = []
    for kind in kinds:
        paths = sorted(Path(previews, kind).glob("step*.png"))
        if len(paths) != n_calls:
            raise ValueError(
                f"{previews}/{kind} holds {len(paths)} previews but the image took {n_calls} "
                f"U-Net calls; delete {previews} and rerun snakemake to regenerate it with "
                f"{kind} previews"
            )
        rows.extend((kind, step, path) for step, path in enumerate(paths))
    rows.append((FINAL, n_calls, Path(image)))
    images = []
    for _kind, _step, path in rows:
        with Image.open(path) as handle:
            images.append(handle.convert("RGB"))
    probabilities = classifier.probabilities(images, batch_size)
    kinds_of_rows = [kind for kind, _step, _path in rows]
    steps_of_rows = [step for _kind, step, _path in rows]
    args = (classifier.class_ids, classifier.class_names)
    topk = top_k_table(probabilities, kinds_of_rows, steps_of_rows, top_k, *args)
    curves = curves_table(probabilities, kinds_of_rows, steps_of_rows, target, top_k, *args)
    for table in (topk, curves):
        timestep = table["step"].map(dict(enumerate(timesteps))).astype(float)
        table.insert(2, "timestep", timestep.where(table["kind"] != FINAL))
    return topk, curves


# --- jobs -----------------------------------------------------------------------------------------


def classify_job(
    model: dict,
    allow_download: bool,
    device: str,
    batch_size: int,
    top_k: int,
    kinds: Sequence[str],
    images: Sequence[dict],
    classes: str = IMAGENET,
) -> None:
    """``images``: one dict per image with its ``prompt_id``, ``seed``, ``target`` class index,
    input paths ``image``, ``previews``, ``meta`` and output paths ``topk`` and ``curves``; the
    classifier is loaded once for all of them."""
    from ..models import ModelRef, resolve_device

    ref = ModelRef.from_config("classification.model", model)
    classifier = load_classifier(ref, resolve_device(device), allow_download, classes)
    log.info("classifier %s, preprocessing %s", ref.describe(), classifier.data_config)
    for number, image in enumerate(images, start=1):
        topk, curves = classify_generation(
            classifier,
            Path(image["image"]),
            Path(image["previews"]),
            Path(image["meta"]),
            kinds,
            int(image["target"]),
            top_k,
            batch_size,
        )
        for table in (topk, curves):
            table.insert(0, "prompt_id", image["prompt_id"])
            table.insert(1, "seed", int(image["seed"]))
        write_csv(image["topk"], topk)
        write_csv(image["curves"], curves)
        final = curves[curves["is_target"] & (curves["kind"] == FINAL)].iloc[0]
        log.info(
            "image %d/%d (%s, seed %d): target %s, probability %.4g, rank %d on the final image",
            number,
            len(images),
            image["prompt_id"],
            int(image["seed"]),
            final["class_name"],
            final["probability"],
            final["rank"],
        )


def summary_job(
    curves_paths: Sequence[str],
    top_k: int,
    metrics: dict,
    first_path: str,
    final_path: str,
    summary_path: str,
) -> None:
    # Ids like "007" must stay strings.
    curves = pd.concat(
        [pd.read_csv(path, dtype={"prompt_id": str}) for path in curves_paths], ignore_index=True
    )
    ks = criteria(top_k)
    first = first_correct_table(curves, ks)
    final = final_table(curves)
    summary = summary_table(
        first, final, ks, metrics["bootstrap_resamples"], metrics["ci_level"], metrics["seed"]
    )
    write_csv(first_path, first)
    write_csv(final_path, final)
    write_csv(summary_path, summary)
    log.info("%d images, %d summary rows", len(final), len(summary))


def topk_figure_job(
    topk_path: str,
    curves_path: str,
    previews: str,
    image: str,
    prompt: str,
    seed: int,
    note: str,
    out_path: str,
) -> None:
    topk = pd.read_csv(topk_path)
    curves = pd.read_csv(curves_path)
    target = curves.loc[curves["is_target"], "class_name"].iloc[0]
    title = f"{prompt!r} (seed {seed}), target {target}: top-{topk['rank'].max()} over the steps"
    topk_figure(topk, curves, Path(previews), Path(image), title, Path(out_path), note)


def first_correct_figure_job(
    first_path: str,
    summary_path: str,
    emergence_path: str | None,
    note: str,
    out_path: str,
) -> None:
    emergence = None
    if emergence_path:
        emergence = pd.read_csv(emergence_path)
        try:
            emergence_groups(emergence)
        except ValueError as error:
            raise ValueError(f"{emergence_path}: {error}") from None
    rows = first_correct_figure(
        pd.read_csv(first_path), pd.read_csv(summary_path), Path(out_path), emergence, note
    )
    log.info("rows of the figure: %s", rows)
