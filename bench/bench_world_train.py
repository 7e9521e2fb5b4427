"""Issue 15, training: every model of the known-answer world from scratch on the CPU (the VAE,
the U-Net with its text encoder, the dense labeler and the classifier, and the exact labeler's
world definition) with ``--cores`` cores, from a fresh clone of the repository's HEAD.

The clone runs ``config/world.yaml``'s rule family (``world_weights``) with its world section
changed only where the CPU differs: ``world.device: cpu`` and the CPU recipe
(``world.diffusion: {}``, ``ldmprobe.world.train.Recipe``'s defaults), into fresh folders, so
nothing committed is reused. The record keeps the wall and CPU time of the whole run, each
model's own training times and quality as its RECIPE.json records them, and the load average
before: the 30-minute target only means something on an otherwise idle machine. ``--tiny``
only dry-runs it (the script's mechanics, no timing).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml
from bench_demo import clone, job_total, snakemake
from benchlib import load, measure_command, parser, record

STUDY_CONFIG = "config/world.yaml"
TRAIN_CONFIG = "config/bench-world-train.yaml"
WEIGHTS = "resources/bench-world/weights"
TARGET_S = 1800


def cpu_config(study: dict) -> dict:
    """The study's config with the world trained on the CPU by the CPU recipe, into fresh
    folders."""
    world = {
        **study["world"],
        "device": "cpu",
        "diffusion": {},
        "weights_dir": WEIGHTS,
        "work_dir": "resources/bench-world/work",
    }
    return {**study, "world": world}


def model_records(weights: Path) -> dict:
    """Each trained folder's RECIPE.json: its training times and measured quality."""
    records = {}
    for folder in ("diffusion", "labeler", "classifier"):
        data = json.loads((weights / folder / "RECIPE.json").read_text())
        records[folder] = {key: data[key] for key in ("training", "quality") if key in data}
        for key in ("train_seconds", "wall_s", "cpu_s"):
            if key in data:
                records[folder][key] = data[key]
    return records


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--cores", type=int, default=2)
    options = args.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-world-train-") as tmp:
        work, commit = clone(Path(tmp))
        study = yaml.safe_load((work / STUDY_CONFIG).read_text())
        (work / TRAIN_CONFIG).write_text(yaml.safe_dump(cpu_config(study), sort_keys=False))
        cores = ["--cores", str(options.cores)]
        plan = measure_command(
            snakemake(work, TRAIN_CONFIG, *cores, "-n", "--", "world_weights"), env=env
        )
        if plan["rc"] != 0:
            raise RuntimeError(f"dry run failed:\n{plan['stderr'][-3000:]}")
        results = {"jobs": job_total(plan["stdout"])}
        if not options.tiny:
            load_before = load()
            run = measure_command(
                snakemake(work, TRAIN_CONFIG, *cores, "--", "world_weights"), env=env
            )
            if run["rc"] != 0:
                raise RuntimeError(f"training failed:\n{run['stderr'][-3000:]}")
            results.update(
                wall_s=round(run["wall_s"], 1),
                cpu_s=round(run["cpu_s"], 1),
                peak_rss_bytes=run["peak_rss_bytes"],
                load_before=load_before,
                models=model_records(work / WEIGHTS),
            )
        settings = {
            "config": STUDY_CONFIG,
            "world": cpu_config(study)["world"],
            "commit": commit,
            "cores": options.cores,
            "target_s": TARGET_S,
            "tiny": options.tiny,
        }
        record(options.results_dir, "world_train_cpu", "cpu", settings, results)


if __name__ == "__main__":
    main()
