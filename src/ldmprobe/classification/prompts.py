"""The classification experiment's prompt table: prompts that name ImageNet-1k classes.

Read through :func:`ldmprobe.core.prompts.load_prompts` (ids, prompts, seeds and the class column),
each row's class resolved to its ImageNet-1k index. Runs when the Snakefile is parsed: standard
library and pandas only (timm's class list is read from its files, without importing it).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import re
from pathlib import Path

import pandas as pd

from ..core.prompts import PromptTableError, load_prompts

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
        from ..scenes.nets import CLASSES

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

    Read and validated by :func:`ldmprobe.core.prompts.load_prompts`, the target column (an
    ImageNet-1k class index or WordNet id per row) among them; resolved here. Returns columns
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
            "target": columns["target"],
        },
    }
    try:
        table = load_prompts(prompts_spec, base_dir, key="classification.prompts")
        indices = [
            resolve_class(row.target, f"prompt table {row.source}, line {row.line}", classes)
            for row in table.itertuples()
        ]
    except PromptTableError as error:
        raise PromptTableError(f"classification.prompts: {error}") from None
    synsets, names = class_list(classes)
    table = table.drop(columns=["split", "target"])
    table.insert(3, "class_index", indices)
    table.insert(4, "class_id", [synsets[index] for index in indices])
    table.insert(5, "class_name", [names[index] for index in indices])
    return table
