"""Issue 15's numbers from a finished world study: a record per study in
bench/results/world_study.jsonl, read off its tables (no recomputation).

Per task and headline metric (saliency Dice; depth Spearman and shading Pearson, over all
pixels and over object pixels): the best U-Net layer at the last step with its bootstrap
interval, each control's best layer at the same step, the probe minus the permuted U-Net
(paired by image, from the per-image table), and the emergence steps of the probe's best
layer and of the labeler on the previews; where the study has its grid ceiling table, the
ceiling of the best probe layer's token grid (the best any probe on that grid can score). With
the intervention: its summary rows; route (b): its regeneration fidelity.

Usage: python bench/bench_world_study.py --results results --config config/world.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import record

HEADLINES = {
    "saliency": ["dice"],
    "depth": ["spearman", "spearman_objects"],
    "shading": ["pearson", "pearson_objects"],
}


def paired_difference(per_image: pd.DataFrame, a: dict, b: dict, seed: int = 0) -> dict:
    """Mean of a - b over the images both score, with a 95% bootstrap interval over images."""

    def values(selector):
        rows = per_image
        for key, value in selector.items():
            rows = rows[rows[key] == value]
        return rows.set_index(["prompt_id", "seed"])["value"]

    joined = pd.concat([values(a), values(b)], axis=1, join="inner").dropna()
    diff = (joined.iloc[:, 0] - joined.iloc[:, 1]).to_numpy()
    rng = np.random.default_rng(seed)
    means = rng.choice(diff, (1000, len(diff))).mean(axis=1)
    return {
        "mean": round(float(diff.mean()), 3),
        "ci": [round(float(np.quantile(means, q)), 3) for q in (0.025, 0.975)],
        "n": len(diff),
    }


def study_record(results: Path) -> dict:
    metrics = pd.read_csv(results / "tables" / "metrics.csv")
    per_image = pd.read_csv(results / "tables" / "per_image_metrics.csv.gz")
    ceiling_path = results / "tables" / "grid_ceiling.csv"
    ceiling = pd.read_csv(ceiling_path) if ceiling_path.is_file() else None
    last = int(metrics[metrics.source == "unet"].step.max())
    rows = {}
    for task, names in HEADLINES.items():
        for metric in names:
            at_last = metrics[(metrics.task == task) & (metrics.metric == metric)]
            at_last = at_last[at_last.step == last]
            if at_last.empty:
                continue
            entry = {}
            for source, group in at_last.groupby("source"):
                best = group.sort_values("mean").iloc[-1]
                entry[source] = {
                    "layer": best.layer,
                    "mean": round(float(best["mean"]), 3),
                    "ci": [round(float(best.ci_low), 3), round(float(best.ci_high), 3)],
                    "n": int(best.n),
                }
            if "unet" in entry and ceiling is not None:
                layer = entry["unet"]["layer"]
                grid = ceiling[(ceiling.task == task) & (ceiling.metric == metric)]
                grid = grid[grid.layers.str.split().map(lambda names, layer=layer: layer in names)]
                if not grid.empty:
                    top = grid.iloc[0]
                    entry["grid_ceiling"] = {
                        "grid": top.grid,
                        "mean": round(float(top["mean"]), 3),
                        "ci": [round(float(top.ci_low), 3), round(float(top.ci_high), 3)],
                        "n": int(top.n),
                    }
            if "unet" in entry:
                probe = {"source": "unet", "layer": entry["unet"]["layer"], "step": last}
                for control in ("unet-permuted", "position", "latent", "vae"):
                    if control in entry:
                        other = {"source": control, "layer": entry[control]["layer"], "step": last}
                        base = {"task": task, "metric": metric}
                        entry[f"unet_minus_{control}"] = paired_difference(
                            per_image, {**base, **probe}, {**base, **other}
                        )
            rows[f"{task}/{metric}"] = entry
    out = {"last_step": last, "best_at_last_step": rows}
    emergence = results / "tables" / "emergence_comparison.csv"
    if emergence.is_file():
        out["emergence"] = pd.read_csv(emergence).to_dict("records")
    manifest = pd.read_csv(results / "dataset.csv", dtype={"excluded_by": str})
    out["images"] = manifest.split.value_counts().to_dict()
    out["excluded_by"] = manifest.excluded_by.fillna("").value_counts().to_dict()
    # Route (b)'s: the redrawn images against the renders that label them.
    fidelity = results / "world" / "regeneration_fidelity_summary.csv"
    if fidelity.is_file():
        out["regeneration_fidelity"] = pd.read_csv(fidelity).to_dict("records")
    for summary in sorted((results / "tables" / "intervention").glob("*-summary.csv")):
        out[f"intervention/{summary.stem}"] = pd.read_csv(summary).to_dict("records")
    return out


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--results", type=Path, default=Path("results"))
    args.add_argument("--config", default="config/world.yaml")
    args.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    args = args.parse_args()
    result = study_record(args.results)
    record(args.results_dir, "world_study", "cpu", {"config": args.config}, result)


if __name__ == "__main__":
    main()
