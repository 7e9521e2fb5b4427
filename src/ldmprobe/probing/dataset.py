"""The dataset manifest: which images exist, their split, and where their files are.

Probe cells depend on this one small table instead of on every image's files, which keeps the
DAG small (a cell has one input, not thousands) while any new or regenerated image still
makes every cell stale through the manifest.

An image a labeler could not label (``ldmprobe.labels.is_excluded``: the world's exact labeler
when its fit fails for depth or shading) keeps its split and names those tasks in column
``excluded_by``: it stays listed and counted, and every stage that reads a task's train, val or
test split (``task_split``) leaves it out of that task alone, so an image without a depth label
still trains and scores the saliency probe.
"""

from __future__ import annotations

import pandas as pd

from ..core.io import write_csv

EXCLUDED = "excluded"
LABEL_PREFIX = "label_"


def build_manifest(
    prompts: pd.DataFrame, paths: dict[str, list[str]], out_path: str
) -> pd.DataFrame:
    """``paths`` maps a column name (store, image, meta, label_<task>) to one path per row."""
    from ..labels import is_excluded

    manifest = prompts[["prompt_id", "seed", "split"]].copy()
    for column, values in paths.items():
        if len(values) != len(manifest):
            raise ValueError(f"{column}: {len(values)} paths for {len(manifest)} images")
        manifest[column] = values
    label_columns = [c for c in paths if c.startswith(LABEL_PREFIX)]
    excluded_by = [
        " ".join(c.removeprefix(LABEL_PREFIX) for c in label_columns if is_excluded(row[c]))
        for _, row in manifest.iterrows()
    ]
    manifest["excluded_by"] = excluded_by
    write_csv(out_path, manifest)
    return manifest


def task_split(manifest: pd.DataFrame, task: str) -> pd.Series:
    """The images' split for ``task``: ``excluded`` where the task has no label (a manifest
    without the ``excluded_by`` column excludes nothing)."""
    if "excluded_by" not in manifest:
        return manifest["split"]
    excluded = manifest["excluded_by"].str.split().map(lambda tasks: task in tasks)
    return manifest["split"].where(~excluded, EXCLUDED)


def excluded_from(image: pd.Series, task: str) -> bool:
    """Whether the manifest row ``image`` has no label for ``task``."""
    return task in image.get("excluded_by", "").split()


def usable_by_all(manifest: pd.DataFrame) -> pd.Series:
    """Images that every task has a label for."""
    if "excluded_by" not in manifest:
        return pd.Series(True, index=manifest.index)
    return manifest["excluded_by"] == ""


def read_manifest(path: str) -> pd.DataFrame:
    return pd.read_csv(
        path, dtype={"prompt_id": str, "seed": str, "split": str, "excluded_by": str}
    ).assign(
        seed=lambda frame: frame["seed"].map(int),
        excluded_by=lambda frame: frame["excluded_by"].fillna(""),
    )
