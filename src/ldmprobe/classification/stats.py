"""The classification experiment's tables: per image, the top-k classes and the tracked
classes' probability and rank at every step; over images, the first step from which the target
is top-1 (top-k) and stays so, with bootstrap intervals, and the confidence on the final images.

"Step" is the denoiser call index, as everywhere in the project; the final image has step =
number of calls and kind ``final``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..core.metrics import summarise

FINAL = "final"


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
