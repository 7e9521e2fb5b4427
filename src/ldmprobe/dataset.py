"""The dataset manifest: which images exist, their split, and where their files are.

Probe cells depend on this one small table instead of on every image's files, which keeps the
DAG small (a cell has one input, not thousands) while any new or regenerated image still
makes every cell stale through the manifest.
"""

from __future__ import annotations

import pandas as pd

from .io import write_csv


def build_manifest(
    prompts: pd.DataFrame, paths: dict[str, list[str]], out_path: str
) -> pd.DataFrame:
    """``paths`` maps a column name (store, image, meta, label_<task>) to one path per row."""
    manifest = prompts[["prompt_id", "seed", "split"]].copy()
    for column, values in paths.items():
        if len(values) != len(manifest):
            raise ValueError(f"{column}: {len(values)} paths for {len(manifest)} images")
        manifest[column] = values
    write_csv(out_path, manifest)
    return manifest


def read_manifest(path: str) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"prompt_id": str, "seed": str, "split": str}).assign(
        seed=lambda frame: frame["seed"].map(int)
    )
