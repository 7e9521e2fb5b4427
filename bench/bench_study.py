"""Issue 17, a study end to end: the whole workflow (generation, labels, probes, tables,
figures, report) on the full-size SD v1.x architecture with random weights, timed per stage.

A config is written from the reference one (``config/config.yaml``: 512 px, 15 LMS steps,
float16, every layer at every step, the four controls, ``int8-channel`` stores) with these
changes: ``--images`` captions of the reference prompt tables (60% train, 10% val, 30% test),
the diffusion model a random-weight SD v1.4-architecture folder built first
(``full_size.build_full_size_sd``, timed apart), the demo's random-weight labelers (rembg
U²-Net-lite, DPT, Marigold; built by the workflow, as in ``make demo``: the real labelers'
weights are not here, so the label stage's seconds are those of small labelers, on
``--label-device``, the CPU by default), generation and probes on ``--device``. Snakemake runs
it in a temp directory (``--directory``); the report is a second Snakemake call
(``--report``).

Per stage, from Snakemake's own log (each job's start and finish lines): the sum of its jobs'
seconds (*busy*) and the time from its first job's start to its last job's end (*span*);
stages are the rules grouped: models (``demo_model``, ``layer_table``), generate, label,
probes (``dataset``, ``probe``), tables (``aggregate``, ``labeler_scores``, ``emergence``),
figures (``figure``, ``examples``, ``comparison_figure``). Images per second is the images
over the generate stage's span. Bytes written: the results folder, by top folder.

``--tiny``: on the CPU, the tiny demo SD model (built by the workflow), 4 images at 64 px and
4 steps, one task, one cell, no controls: the script's mechanics (21 jobs, about 70 CPU-s;
1 min 45 s wall at load 8 on 2 shared cores); never a record to keep.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from bench_demo import run_and_report
from benchlib import REPO, directory_bytes, load, parser, record

COMMAND = "python bench/bench_study.py --images 100 --device cuda"
REFERENCE_PROMPTS = REPO / "config" / "reference-prompts"
# Rule name prefixes of each stage (batch rules are <stage>_batch<i>), the first match wins.
STAGES = [
    ("models", ("demo_model", "layer_table")),
    ("tables", ("aggregate", "labeler_scores", "emergence")),
    ("generate", ("generate",)),
    ("label", ("label",)),
    ("probes", ("dataset", "probe")),
    ("figures", ("figure", "examples", "comparison_figure")),
]


def stage_of(rule: str) -> str:
    for stage, prefixes in STAGES:
        if any(rule == prefix or rule.startswith(f"{prefix}_") for prefix in prefixes):
            return stage
    return "other"


def write_prompts(path: Path, images: int) -> dict[str, int]:
    """``images`` captions of the reference tables: the first rows of its train table (the
    train and val splits) and of its test table."""
    test = max(1, round(0.3 * images))
    val = max(1, round(0.1 * images))
    train = images - test - val
    tables = {
        name: pd.read_csv(
            REFERENCE_PROMPTS / f"{name}_split_prompts_seeds.csv", encoding="iso-8859-1"
        )
        for name in ("train", "test")
    }
    rows = pd.concat(
        [
            tables["train"].head(train + val).assign(split=["train"] * train + ["val"] * val),
            tables["test"].head(test).assign(split="test"),
        ]
    )
    rows = rows.rename(columns={"prompts": "prompt", "seeds": "seed", "prompt_inds": "prompt_id"})
    rows[["prompt_id", "prompt", "seed", "split"]].to_csv(path, index=False, encoding="utf-8")
    return {"train": train, "val": val, "test": test}


def study_config(work: Path, options, model_id: str) -> dict:
    """The reference config with this study's prompts, models, labelers and device."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["results"] = "results"
    config["prompts"] = {
        "files": [{"path": str(work / "prompts.csv")}],
        "encoding": "utf-8",
        "columns": {"id": "prompt_id", "prompt": "prompt", "seed": "seed", "split": "split"},
    }
    config["models"] = {
        "allow_download": False,
        "demo_dir": "resources/demo-models",
        "diffusion": {"id": model_id},
    }
    config["labels"] = {**demo["labels"], "device": options.label_device}
    config["generation"]["device"] = options.device
    config["probe"]["device"] = options.device
    config["probe"]["tasks"]["depth"] = {"target_scaling": "train"}
    if options.probe_steps != "all":
        config["probe"]["steps"] = [int(step) for step in options.probe_steps.split(",")]
    config["classification"]["enabled"] = False
    if options.tiny:
        config["images_per_job"] = 4
        config["generation"].update(height=64, width=64, steps=4, dtype="float32")
        config["labels"]["tasks"] = {"depth": config["labels"]["tasks"]["depth"]}
        config["probe"].update(layers=["up3.2"], steps=[3])
        config["probe"]["defaults"]["epochs"] = 2
        config["probe"]["tasks"] = {"depth": {"target_scaling": "train"}}
        config["metrics"]["bootstrap_resamples"] = 200
        config["figures"]["example_images"] = 1
        for control in config["controls"].values():
            control["enabled"] = False
    return config


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+)")


def job_times(log: str) -> list[dict]:
    """Each job of a Snakemake log: its rule, start and end (the log's second-resolution
    stamps: a job's start is the stamp before its rule line, its end the one before
    ``Finished jobid``)."""
    stamp, rule, jobs = None, None, {}
    for line in log.splitlines():
        if match := STAMP.match(line):
            stamp = datetime.datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
        elif match := START.match(line):
            rule = (match.group(1), stamp)
        elif (match := JOBID.match(line)) and rule is not None:
            jobs[match.group(1)] = {"rule": rule[0], "start": rule[1]}
            rule = None
        elif (match := FINISHED.match(line)) and match.group(1) in jobs:
            jobs[match.group(1)]["end"] = stamp
    return [job for job in jobs.values() if "end" in job]


def stage_seconds(jobs: list[dict]) -> dict[str, dict]:
    stages: dict[str, dict] = {}
    for job in jobs:
        if job["rule"] == "all":
            continue
        stage = stages.setdefault(
            stage_of(job["rule"]), {"jobs": 0, "busy_s": 0.0, "first": None, "last": None}
        )
        stage["jobs"] += 1
        stage["busy_s"] += (job["end"] - job["start"]).total_seconds()
        stage["first"] = min(filter(None, [stage["first"], job["start"]]))
        stage["last"] = max(filter(None, [stage["last"], job["end"]]))
    return {
        name: {
            "jobs": stage["jobs"],
            "busy_s": stage["busy_s"],
            "span_s": (stage["last"] - stage["first"]).total_seconds(),
        }
        for name, stage in stages.items()
    }


def results_bytes(results: Path) -> dict[str, int]:
    sizes = {
        entry.name: directory_bytes(entry) if entry.is_dir() else entry.stat().st_size
        for entry in sorted(results.iterdir())
    }
    return {**sizes, "total": sum(sizes.values())}


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--images", type=int, default=100)
    args.add_argument("--device", default="cuda", help="cuda or cpu: generation, labels, probes")
    args.add_argument(
        "--label-device",
        default="cpu",
        help="labels.device: the demo's labelers are small, and rembg needs onnxruntime's CUDA "
        "provider on a GPU",
    )
    args.add_argument("--cores", type=int, default=os.cpu_count(), help="snakemake --cores")
    args.add_argument(
        "--probe-steps",
        default="all",
        help="probe.steps as a comma list (default all 15: the reference grid)",
    )
    args.add_argument("--work", type=Path, help="run in a temp dir under this folder")
    options = args.parse_args(argv)
    if options.tiny:
        options.images, options.device = 4, "cpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-study-", dir=options.work) as tmp:
        work = Path(tmp)
        splits = write_prompts(work / "prompts.csv", options.images)
        build_s = None
        if options.tiny:
            model_id = "resources/demo-models/stable-diffusion"
        else:
            import time

            from full_size import build_full_size_sd

            started = time.perf_counter()
            build_full_size_sd(work / "sd-v1-random", dtype="float16")
            build_s = round(time.perf_counter() - started, 1)
            model_id = str(work / "sd-v1-random")
        config = study_config(work, options, model_id)
        config_path = work / "study.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cores = ["--cores", str(options.cores)]
        load_before = load()
        run, report = run_and_report(
            work, config_path, cores, env, "study", snakefile=REPO / "Snakefile"
        )
        logs = sorted((work / ".snakemake" / "log").glob("*.snakemake.log"))
        jobs = job_times(logs[0].read_text())
        stages = stage_seconds(jobs)
        stages["report"] = {"jobs": 1, "busy_s": report["wall_s"], "span_s": report["wall_s"]}
        generate_span = stages.get("generate", {}).get("span_s") or float("nan")
        results = {
            "model_build_s": build_s,
            "workflow_s": round(run["wall_s"], 1),
            "workflow_cpu_s": round(run["cpu_s"], 1),
            "report_s": round(report["wall_s"], 1),
            "total_s": round(run["wall_s"] + report["wall_s"], 1),
            "peak_rss_bytes": run["peak_rss_bytes"],
            "jobs": len(jobs),
            "stages": stages,
            "images_per_s": options.images / generate_span,
            "bytes": results_bytes(work / "results"),
            "load_before": load_before,
        }
        settings = {
            "architecture": "SD v1.4, random weights" if not options.tiny else "demo SD",
            "images": options.images,
            "splits": splits,
            "device": options.device,
            "label_device": options.label_device,
            "cores": options.cores,
            "size": config["generation"]["height"],
            "steps": config["generation"]["steps"],
            "dtype": config["generation"]["dtype"],
            "codec": config["generation"]["codec"],
            "store": config["generation"]["store"],
            "probe_layers": config["probe"]["layers"],
            "probe_steps": config["probe"]["steps"],
            "tasks": sorted(config["labels"]["tasks"]),
            "labelers": "the demo's random-weight labelers",
            "controls": sorted(k for k, v in config["controls"].items() if v.get("enabled")),
            "images_per_job": config["images_per_job"],
            "tiny": options.tiny,
        }
        record(options.results_dir, "study_end_to_end", options.device, settings, results)


if __name__ == "__main__":
    main()
