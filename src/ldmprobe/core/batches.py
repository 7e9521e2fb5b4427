"""Image batches: one generate, label or classify job for many images, one model load.

With ``images_per_job: 1`` every per-image stage is one wildcard rule and a job per image. Above
1 the workflow defines one rule per batch of consecutive prompt-table rows, whose outputs are the
same per-image files, so everything downstream is unchanged. Batches follow the table's order:
rows appended to the table leave the existing batches (and their outputs) alone.

Imported by the Snakefile at parse time, so it must not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ImageKey = tuple[str, int]


@dataclass(frozen=True)
class ImageBatch:
    index: int
    keys: tuple[ImageKey, ...]


def table_order(table, files: Sequence[dict]) -> list[ImageKey]:
    """The (prompt id, seed) keys of a loaded prompt table (``load_prompts`` sorts its rows by
    key) in the tables' own order: the files as configured, each file's rows as written."""
    position = {entry["path"]: index for index, entry in enumerate(files)}
    rows = sorted(
        zip(table.source, table.line, table.prompt_id, table.seed, strict=True),
        key=lambda row: (position[row[0]], row[1]),
    )
    return [(prompt_id, int(seed)) for _source, _line, prompt_id, seed in rows]


def image_batches(keys: Iterable[ImageKey], images_per_job: int) -> list[ImageBatch]:
    """Consecutive runs of ``images_per_job`` (prompt id, seed) keys, the last one shorter."""
    if images_per_job < 1:
        raise ValueError(f"images_per_job must be at least 1, got {images_per_job}")
    keys = [(str(prompt_id), int(seed)) for prompt_id, seed in keys]
    return [
        ImageBatch(index, tuple(keys[start : start + images_per_job]))
        for index, start in enumerate(range(0, len(keys), images_per_job))
    ]


def batch_paths(pattern: str, batch: ImageBatch) -> list[str]:
    """``pattern`` with ``{prompt_id}`` and ``{seed}`` filled in for each image of ``batch``;
    other wildcards (``{task}``) are left for Snakemake."""
    return [
        pattern.replace("{prompt_id}", prompt_id).replace("{seed}", str(seed))
        for prompt_id, seed in batch.keys
    ]


def image_entries(fields: Sequence[dict], **paths: str | Sequence[str]) -> list[dict]:
    """One dict per image of a job: its ``fields`` (from the rule's params) and its paths.

    Each path argument is one path (the per-image rule) or one path per image, in the order of
    ``fields`` (a batch rule).
    """
    columns = {
        name: [value] if isinstance(value, str) else list(value) for name, value in paths.items()
    }
    for name, values in columns.items():
        if len(values) != len(fields):
            raise ValueError(f"{len(values)} '{name}' paths for {len(fields)} images")
    return [
        {**entry, **{name: values[row] for name, values in columns.items()}}
        for row, entry in enumerate(fields)
    ]
