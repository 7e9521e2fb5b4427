"""When does an ImageNet classifier see the prompted object? VGG-16 over the denoising steps.

The UCSD study's second experiment. Images of prompts that name ImageNet classes are generated
with the study's settings; every step's decoded preview (the x0 prediction ``x0`` and the noisy
latent ``xt``) and the final image go through an ImageNet-1k classifier loaded with timm
(``vgg16.tv_in1k``) and preprocessed with the model's own data config. Per image this gives the
top-k classes at every step and the probability and rank of the target class; over images, the
first step from which the target is top-1 (top-k) and stays so, with bootstrap intervals, and the
classifier's confidence on the final images.

"Step" is the U-Net call index, as everywhere in the project; the final image has step = number
of U-Net calls and kind ``final``.

The prompt-table helpers run when the Snakefile is parsed, so this module imports only the
standard library, numpy and pandas at the top; timm (which imports torch) and matplotlib are
imported by the functions that need them.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_file, write_csv
from .metrics import summarise
from .prompts import PromptTableError, load_prompts
from .provenance import png_text

log = logging.getLogger(__name__)

FINAL = "final"
# The schema's defaults, so a spec that did not pass through validate_config behaves the same.
DEFAULT_COLUMNS = {
    "id": "prompt_id",
    "prompt": "prompt",
    "seed": "seed",
    "target": "imagenet_class",
}

_ASCII_INTEGER = re.compile(r"[0-9]+")


# --- ImageNet-1k classes, read at parse time --------------------------------------------------


@functools.cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """WordNet ids of ImageNet-1k in class-index order, and each class's name.

    Read from the metadata files that ``timm.data.ImageNetInfo`` reads, located without importing
    timm: importing it costs every Snakemake job a torch import at parse time. The tests check
    that both give the same ids and names.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise PromptTableError("timm is not installed; it is needed for the ImageNet class names")
    info = Path(next(iter(spec.submodule_search_locations)), "data", "_info")
    synsets = tuple((info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines())
    lemma_lines = (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
    lemmas = dict(csv.reader(lemma_lines, delimiter="\t"))
    return synsets, tuple(lemmas[synset] for synset in synsets)


# The class lists a classifier may be trained on (config key classification.classes): the
# target column names classes of the declared list, and the model must predict that list.
IMAGENET = "imagenet-1k"
WORLD = "world"


def class_list(classes: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Ids and names of the declared class list, in class-index order."""
    if classes == IMAGENET:
        return imagenet_classes()
    if classes == WORLD:
        from .world.nets import CLASSES

        return CLASSES, CLASSES
    raise ValueError(f"unknown class list {classes!r}; expected {IMAGENET!r} or {WORLD!r}")


def resolve_class(cell: str, where: str, classes: str = IMAGENET) -> int:
    """The class index named by ``cell``: an index into the class list or a class id (for
    ImageNet-1k a WordNet id, for the world a class name such as "red sphere")."""
    if classes != IMAGENET:
        ids, _ = class_list(classes)
        text = cell.strip()
        if _ASCII_INTEGER.fullmatch(text) and int(text) < len(ids):
            return int(text)
        if text in ids:
            return ids.index(text)
        raise PromptTableError(
            f"{where}: {text!r} is not a class of the {classes} class list; write a class "
            f"index (0-{len(ids) - 1}) or one of {list(ids)}"
        )
    synsets, names = imagenet_classes()
    text = cell.strip()
    if _ASCII_INTEGER.fullmatch(text):
        index = int(text)
        if index < len(synsets):
            return index
        problem = f"class index {index} is out of range (ImageNet-1k has 0-{len(synsets) - 1})"
    elif text in synsets:
        return synsets.index(text)
    elif not text:
        problem = "the ImageNet class cell is empty"
    else:
        problem = f"{text!r} is neither an ImageNet-1k class index nor a WordNet id of one"
        named = [
            index
            for index, name in enumerate(names)
            if text.lower() in (part.strip().lower() for part in name.split(","))
        ]
        if named:
            problem += "; it is the name of " + ", ".join(
                f"class {index} ({synsets[index]})" for index in named
            )
    raise PromptTableError(
        f"{where}: {problem}; write a class index (0-{len(synsets) - 1}) or a WordNet id such as "
        f"n07749582 (lemon)"
    )


def load_classification_prompts(
    spec: dict, base_dir: str | Path = ".", classes: str = IMAGENET
) -> pd.DataFrame:
    """The rows of the ``classification.prompts`` tables, each with its resolved target class.

    Ids, prompts and seeds are read and validated by :func:`ldmprobe.prompts.load_prompts`; the
    target column (an ImageNet-1k class index or WordNet id per row) is read here. Returns columns
    ``prompt_id``, ``prompt``, ``seed``, ``class_index``, ``class_id`` (WordNet id),
    ``class_name``, ``source``, ``line``, sorted by (prompt_id, seed).
    """
    columns = {**DEFAULT_COLUMNS, **spec.get("columns", {})}
    encoding = spec.get("encoding", "utf-8")
    prompts_spec = {
        "files": [{"path": entry["path"]} for entry in spec["files"]],
        "encoding": encoding,
        "columns": {
            "id": columns["id"],
            "prompt": columns["prompt"],
            "seed": columns["seed"],
            "split": None,
        },
    }
    try:
        table = load_prompts(prompts_spec, base_dir)
        cells = {}
        for entry in spec["files"]:
            path = Path(base_dir) / entry["path"]
            cells.update(_target_cells(entry["path"], path.read_bytes(), encoding, columns))
        indices = [
            resolve_class(
                cells[(row.prompt_id, row.seed)],
                f"prompt table {row.source}, line {row.line}",
                classes,
            )
            for row in table.itertuples()
        ]
    except PromptTableError as error:
        raise PromptTableError(f"classification.prompts: {error}") from None
    synsets, names = class_list(classes)
    table = table.drop(columns="split")
    table.insert(3, "class_index", indices)
    table.insert(4, "class_id", [synsets[index] for index in indices])
    table.insert(5, "class_name", [names[index] for index in indices])
    return table


def _target_cells(source: str, data: bytes, encoding: str, columns: dict) -> dict:
    """{(prompt id, seed): target cell} of one table that ``load_prompts`` already accepted."""
    text = data.decode(encoding).removeprefix("\ufeff").replace("\r\n", "\n")
    rows = [fields for fields in csv.reader(io.StringIO(text, newline=""), strict=True) if fields]
    header = [name.strip() for name in rows[0]]
    name = columns["target"]
    if header.count(name) != 1:
        found = "appears more than once in" if name in header else "is not in"
        raise PromptTableError(
            f"prompt table {source}: the ImageNet class column {name!r} (config key "
            f"classification.prompts.columns.target) {found} the header {header}"
        )
    target, prompt_id, seed = (header.index(columns[key]) for key in ("target", "id", "seed"))
    return {
        (fields[prompt_id].strip(), int(fields[seed].strip())): fields[target]
        for fields in rows[1:]
    }


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
    from .compat import ensure_torchvision_importable
    from .models import resolve_model

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


# --- one image: top-k per step and the tracked classes' curves -----------------------------------


def class_ranks(probabilities: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """1-based rank of each of ``classes`` in each row: 1 + the number of classes more probable."""
    chosen = probabilities[:, list(classes)]
    return 1 + (probabilities[:, None, :] > chosen[:, :, None]).sum(axis=-1)


def top_k_table(
    probabilities: np.ndarray,
    kinds: Sequence[str],
    steps: Sequence[int],
    top_k: int,
    class_ids: Sequence[str],
    class_names: Sequence[str],
) -> pd.DataFrame:
    """Tidy top-k: one row per (kind, step, rank) with the class and its probability."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    n_rows, k = order.shape
    classes = order.ravel()
    return pd.DataFrame(
        {
            "kind": np.repeat(np.asarray(kinds, dtype=object), k),
            "step": np.repeat(np.asarray(steps), k),
            "rank": np.tile(np.arange(1, k + 1), n_rows),
            "class_index": classes,
            "class_id": [class_ids[c] for c in classes],
            "class_name": [class_names[c] for c in classes],
            "probability": np.take_along_axis(probabilities, order, axis=1).ravel(),
        }
    )


def curves_table(
    probabilities: np.ndarray,
    kinds: Sequence[str],
    steps: Sequence[int],
    target: int,
    top_k: int,
    class_ids: Sequence[str],
    class_names: Sequence[str],
) -> pd.DataFrame:
    """Probability and rank at every (kind, step) of the target class and of every class that is
    in the top-k anywhere, so a class's whole curve can be drawn, not only its top-k stretches."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    classes = list(dict.fromkeys([target, *order.T.ravel().tolist()]))
    ranks = class_ranks(probabilities, classes)
    n_rows = len(kinds)
    return pd.DataFrame(
        {
            "kind": np.tile(np.asarray(kinds, dtype=object), len(classes)),
            "step": np.tile(np.asarray(steps), len(classes)),
            "class_index": np.repeat(classes, n_rows),
            "class_id": np.repeat([class_ids[c] for c in classes], n_rows),
            "class_name": np.repeat(
                np.asarray([class_names[c] for c in classes], dtype=object), n_rows
            ),
            "is_target": np.repeat([c == target for c in classes], n_rows),
            "probability": probabilities[:, classes].T.ravel(),
            "rank": ranks.T.ravel(),
        }
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


# --- statistics over images ----------------------------------------------------------------------


def settled_step(steps: Sequence[int], ranks: Sequence[int], k: int) -> int | None:
    """First step from which the target's rank is at most ``k`` at that step and every later one.

    None when the last step misses (the target never settles into the top-k).
    """
    steps = np.asarray(steps)
    hits = np.asarray(ranks) <= k
    if steps.ndim != 1 or steps.shape != hits.shape:
        raise ValueError(f"need one rank per step: {steps.size} steps, {hits.size} ranks")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"steps must be strictly ascending, got {steps.tolist()}")
    if steps.size == 0 or not hits[-1]:
        return None
    misses = np.flatnonzero(~hits)
    return int(steps[misses[-1] + 1]) if misses.size else int(steps[0])


def criteria(top_k: int) -> list[int]:
    """The ranks the statistics ask for: top-1, and top-k when k > 1."""
    return sorted({1, top_k})


def first_correct_table(curves: pd.DataFrame, ks: Sequence[int]) -> pd.DataFrame:
    """Per image, preview kind and k: the first step from which the target is top-k and stays.

    ``curves`` holds the curves tables of many images (with ``prompt_id`` and ``seed``). ``step``
    is missing (NA) for an image whose target never settles; ``n_steps`` is the kind's step count.
    """
    target = curves[curves["is_target"] & (curves["kind"] != FINAL)].sort_values("step")
    rows = []
    keys = ["prompt_id", "seed", "class_index", "class_name", "kind"]
    for (prompt_id, seed, class_index, class_name, kind), group in target.groupby(keys, sort=True):
        for k in ks:
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "seed": seed,
                    "class_index": class_index,
                    "class_name": class_name,
                    "kind": kind,
                    "criterion": f"top{k}",
                    "step": settled_step(group["step"], group["rank"], k),
                    "n_steps": len(group),
                }
            )
    table = pd.DataFrame(rows, columns=[*keys, "criterion", "step", "n_steps"])
    table["step"] = table["step"].astype("Int64")
    return table


def final_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per image: the target class's probability and rank on the final image."""
    final = curves[curves["is_target"] & (curves["kind"] == FINAL)]
    columns = ["prompt_id", "seed", "class_index", "class_name", "probability", "rank"]
    return final[columns].sort_values(["prompt_id", "seed"]).reset_index(drop=True)


def summary_table(
    first: pd.DataFrame,
    final: pd.DataFrame,
    ks: Sequence[int],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean with bootstrap interval over images, for all images and per target class.

    ``first_correct_step``: over the images whose target settles (n counts them);
    ``settled_fraction``: the share of images whose target settles at all;
    ``final_probability``: the target's probability on the final image;
    ``final_accuracy``: the share of final images with the target in the top-k.
    """
    rows = []

    def add(statistic, kind, criterion, target, values):
        stats = summarise(np.asarray(values, dtype=np.float64), n_resamples, level, seed)
        rows.append(
            {
                "statistic": statistic,
                "kind": kind,
                "criterion": criterion,
                "target": target,
                **stats,
            }
        )

    groups = [("all", first, final)] + [
        (name, first[first["class_name"] == name], final[final["class_name"] == name])
        for name in sorted(set(first["class_name"]) | set(final["class_name"]))
    ]
    for target, first_rows, final_rows in groups:
        for (kind, criterion), group in first_rows.groupby(["kind", "criterion"], sort=True):
            steps = group["step"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
            add("first_correct_step", kind, criterion, target, steps)
            add("settled_fraction", kind, criterion, target, ~np.isnan(steps))
        add("final_probability", FINAL, "", target, final_rows["probability"])
        for k in ks:
            add("final_accuracy", FINAL, f"top{k}", target, final_rows["rank"] <= k)
    return pd.DataFrame(
        rows,
        columns=["statistic", "kind", "criterion", "target", "mean", "ci_low", "ci_high", "n"],
    )


# --- figures --------------------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.split(",")[0]


def _thumbnail_steps(n_steps: int, count: int = 6) -> list[int]:
    return sorted({int(round(s)) for s in np.linspace(0, n_steps - 1, min(count, n_steps))})


def topk_figure(
    topk: pd.DataFrame,
    curves: pd.DataFrame,
    previews: Path,
    final_image: Path,
    title: str,
    out_path: Path,
    note: str = "",
    max_legend: int = 8,
) -> None:
    """The study's Figures 5-6 for one image: per preview kind, a strip of previews and the
    probability over the steps of every class in that kind's top-k at some step; the target is
    drawn black and dashed, the final image's probabilities as stars after the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    kinds = [kind for kind in dict.fromkeys(topk["kind"]) if kind != FINAL]
    n_steps = int(topk.loc[topk["kind"] != FINAL, "step"].max()) + 1
    shown = _thumbnail_steps(n_steps)
    final = curves[curves["kind"] == FINAL].set_index("class_index")["probability"]
    # An inch above the panels for the two-line title, whatever the number of kinds.
    height = 1 + 4.6 * len(kinds)
    fig = plt.figure(figsize=(9, height))
    grid = fig.add_gridspec(
        2 * len(kinds), 1, height_ratios=[1, 2.4] * len(kinds), hspace=0.5, top=1 - 1 / height
    )
    for row, kind in enumerate(kinds):
        strip = grid[2 * row].subgridspec(1, len(shown) + 1, wspace=0.05)
        for column, step in enumerate([*shown, None]):
            ax = fig.add_subplot(strip[column])
            path = final_image if step is None else Path(previews, kind, f"step{step:03d}.png")
            with Image.open(path) as image:
                ax.imshow(np.asarray(image.convert("RGB")))
            ax.set_title("final" if step is None else f"{kind} step {step}", fontsize=7)
            ax.axis("off")
        ax = fig.add_subplot(grid[2 * row + 1])
        entered = topk[topk["kind"] == kind]
        # The target gets its own line below, whether or not it enters the top-k.
        lines = curves[
            (curves["kind"] == kind)
            & curves["class_index"].isin(entered["class_index"])
            & ~curves["is_target"]
        ]
        target_rows = curves[(curves["kind"] == kind) & curves["is_target"]]
        peak = lines.groupby("class_index")["probability"].max().sort_values(ascending=False)
        named = set(peak.index[:max_legend])
        colours = iter(plt.cm.tab10(np.linspace(0, 1, 10)))
        for class_index in peak.index:
            line = lines[lines["class_index"] == class_index].sort_values("step")
            if class_index not in named:
                ax.plot(line["step"], line["probability"], color="0.75", lw=0.8)
                continue
            colour = next(colours)
            ax.plot(
                line["step"],
                line["probability"],
                color=colour,
                marker=".",
                label=_short(line["class_name"].iloc[0]),
            )
            ax.plot([n_steps], [final.get(class_index, np.nan)], color=colour, marker="*", ms=9)
        target_line = target_rows.sort_values("step")
        ax.plot(
            target_line["step"],
            target_line["probability"],
            color="black",
            ls="--",
            lw=1.6,
            label=f"target: {_short(target_line['class_name'].iloc[0])}",
        )
        target_index = int(target_line["class_index"].iloc[0])
        ax.plot([n_steps], [final.get(target_index, np.nan)], color="black", marker="*", ms=11)
        ax.set_xticks([*range(n_steps), n_steps], [*map(str, range(n_steps)), "final"], fontsize=7)
        ax.set_xlim(-0.5, n_steps + 0.5)
        top = np.nanmax([1e-3, lines["probability"].max(), target_line["probability"].max()])
        ax.set_ylim(0, 1.08 * float(top))
        ax.set_xlabel("denoising step (U-Net call)")
        ax.set_ylabel(f"probability ({kind} preview)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    _save(fig, out_path)


# Per task, the emergence table's metric drawn beside the classifier: the one the probes'
# comparison uses (Dice for binary tasks, Spearman for continuous ones), else the first listed.
EMERGENCE_METRICS = ("dice", "spearman")
EMERGENCE_REQUIRED = ("task", "layer", "source", "step", "ci_low", "ci_high")


def emergence_groups(emergence: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The emergence table's rows to draw, one group (task, source, metric) per figure row.

    One metric per task: a table with several metrics per curve (the probes' table has one row
    per layer, source and metric) would otherwise draw the same layers several times. Without a
    ``metric`` column the metric is ``""``.
    """
    missing = [column for column in EMERGENCE_REQUIRED if column not in emergence.columns]
    if missing:
        raise ValueError(
            f"the emergence table lacks the columns {missing} (it has {list(emergence.columns)})"
        )
    if "metric" not in emergence.columns:
        emergence = emergence.assign(metric="")
    groups = []
    for task, rows in emergence.groupby("task", sort=True):
        listed = list(dict.fromkeys(rows["metric"]))
        metric = next((m for m in EMERGENCE_METRICS if m in listed), listed[0])
        chosen = rows[rows["metric"] == metric]
        for source, group in chosen.groupby("source", sort=True):
            groups.append(((task, source, metric), group))
    return groups


def first_correct_figure(
    first: pd.DataFrame,
    summary: pd.DataFrame,
    out_path: Path,
    emergence: pd.DataFrame | None = None,
    note: str = "",
) -> list[str]:
    """Per preview kind and criterion, every image's first-correct step (a dot; "never" right of
    the last step) with the mean and its bootstrap interval; below, when given, the probes'
    emergence steps per task and layer with their intervals, on the same step axis.

    Returns the labels of the figure's rows, top to bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_steps = int(first["n_steps"].max()) if len(first) else 0
    never = n_steps + 0.5
    rows = []
    for (kind, criterion), group in first.groupby(["kind", "criterion"], sort=True):
        steps = group["step"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        stats = summary[
            (summary["statistic"] == "first_correct_step")
            & (summary["kind"] == kind)
            & (summary["criterion"] == criterion)
            & (summary["target"] == "all")
        ].iloc[0]
        settled = int((~np.isnan(steps)).sum())
        k = criterion.replace("top", "top-")
        label = f"classifier on {kind}, {k} ({settled}/{len(steps)} settle)"
        rows.append((label, steps, stats, "tab:blue"))
    if emergence is not None:
        for (task, source, metric), group in emergence_groups(emergence):
            steps = pd.to_numeric(group["step"], errors="coerce").to_numpy(dtype=np.float64)
            low = pd.to_numeric(group["ci_low"], errors="coerce").to_numpy(dtype=np.float64)
            high = pd.to_numeric(group["ci_high"], errors="coerce").to_numpy(dtype=np.float64)
            what = f"{source}, {metric}" if metric else source
            label = f"{task} emergence ({what}), {len(group)} layer{'s' * (len(group) != 1)}"
            rows.append((label, steps, (low, high), "tab:orange"))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(rows)))
    rng = np.random.default_rng(0)
    for y, (_label, steps, stats, colour) in enumerate(rows):
        shown = np.where(np.isnan(steps), never, steps)
        jitter = rng.uniform(-0.18, 0.18, size=shown.size)
        ax.scatter(shown, y + jitter, s=14, color=colour, alpha=0.7, zorder=3)
        if isinstance(stats, tuple):  # per-layer intervals of the probes
            for value, lo, hi, dy in zip(steps, *stats, jitter, strict=True):
                if np.isfinite(value) and np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [y + dy] * 2, color=colour, lw=0.8, alpha=0.6)
        elif np.isfinite(stats["mean"]):
            ax.errorbar(
                stats["mean"],
                y - 0.32,
                xerr=[[stats["mean"] - stats["ci_low"]], [stats["ci_high"] - stats["mean"]]],
                fmt="D",
                color="black",
                ms=5,
                capsize=3,
                zorder=4,
            )
    ax.set_yticks(range(len(rows)), [label for label, *_ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.7)
    ax.set_xticks([*range(n_steps), never], [*map(str, range(n_steps)), "never"], fontsize=7)
    ax.set_xlim(-0.5, never + 0.5)
    ax.axvline(n_steps - 0.25, color="0.6", lw=0.8, ls=":")
    xlabel = "first step from which the target stays correct (U-Net call)"
    if emergence is not None:
        xlabel += "; probes: emergence step"
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        "When does the classifier see the object?" + (f"\n{note}" if note else ""), fontsize=10
    )
    _save(fig, out_path)
    return [label for label, *_ in rows]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata=png_text())
    plt.close(fig)


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
    from .jobs import resolve_device
    from .models import ModelRef

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
