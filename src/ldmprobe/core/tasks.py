"""The probing tasks, each declared once: its kind, its metrics and its label key.

The rules (which figures exist), the schema check of task names, labels (how a raw map becomes a
target), probes, emergence and the figures read these declarations. Imported when the
Snakefile is parsed: numpy and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import METRICS_OF_KIND


@dataclass(frozen=True)
class Kind:
    name: str
    headline: str  # the metric of the report's probe-vs-labeler sentence

    @property
    def metrics(self) -> tuple[str, ...]:
        """Per test image, in the tables' order (``ldmprobe.core.metrics`` owns the metrics)."""
        return METRICS_OF_KIND[self.name]


KINDS = {kind.name: kind for kind in (Kind("binary", "dice"), Kind("continuous", "spearman"))}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # a key of KINDS: "binary" targets are thresholded maps, "continuous" are not

    @property
    def metrics(self) -> tuple[str, ...]:
        return KINDS[self.kind].metrics

    @property
    def headline(self) -> str:
        return KINDS[self.kind].headline

    @property
    def label_key(self) -> str:
        """The dataset manifest's column of this task's label files."""
        return f"label_{self.name}"


TASKS = {
    task.name: task
    for task in (
        Task("saliency", "binary"),
        Task("depth", "continuous"),
        Task("shading", "continuous"),
    )
}
