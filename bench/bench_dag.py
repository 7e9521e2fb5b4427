"""Item 4, DAG scale: ``snakemake -n`` time and peak memory for the reference grid (every
layer x every step) with large prompt tables.

The reference config (config/config.yaml) needs the real weights at parse time (preflight), so
the model ids point at the demo architectures in a temp ``models.demo_dir`` (the same 16
self-attention layers, 15 U-Net calls, 512 px), which the workflow builds; the layer_table
checkpoint runs once, so the dry run sees the whole grid. Prompt tables are generated in the
config's layout (files, columns, splits).
"""

from __future__ import annotations

import io
import os
import pstats
import re
import sys
import tempfile
from pathlib import Path

import yaml
from benchlib import REPO, load, measure_command, parser, record

from ldmprobe.core.config import load_schema

# The demo model (ldmprobe.models.demo_models) of each labeler's architecture.
DEMO_LABELERS = {
    "dpt": "dpt-depth",
    "tracer": "tracer-saliency",
    "marigold": "marigold-shading",
    "rembg": "rembg-u2netp",
}


def write_config(work: Path, count: int, images_per_job: int | None) -> Path:
    """The reference config with ``count`` generated prompts and the demo architecture;
    ``images_per_job`` replaces the config's unless None.

    The prompts are spread over the config's prompt files (the reference has a train and a
    test table, each entry naming its split), written with the config's column names.
    """
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    columns = config["prompts"]["columns"]
    entries = config["prompts"]["files"]
    files = []
    for index, entry in enumerate(entries):
        path = work / f"prompts-{count}-{index}.csv"
        ids = range(index, count, len(entries))
        lines = [f"{columns['id']},{columns['prompt']},{columns['seed']}"]
        lines += [f'{i},"a photo of object {i}, on a table",{1000 + i}' for i in ids]
        path.write_text("\n".join(lines) + "\n")
        files.append({**entry, "path": str(path)})
    config["prompts"]["files"] = files
    # Models inside models.demo_dir are built by the workflow (rules/models.smk), not looked
    # up in the Hugging Face cache: the same architectures, no weights needed.
    demo_dir = work / "models"
    config["models"]["demo_dir"] = str(demo_dir)
    config["models"]["diffusion"]["id"] = str(demo_dir / "stable-diffusion")
    for task in config["labels"]["tasks"].values():
        task["model"]["id"] = str(demo_dir / DEMO_LABELERS[task["labeler"]])
    if "preflight" in load_schema()["properties"]:
        # A dry run writes nothing; the reference study's terabytes need not fit in /tmp.
        config["preflight"] = {"check_free_space": False}
    if images_per_job is not None:
        config["images_per_job"] = images_per_job
    path = work / f"config-{count}-{config['images_per_job']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(work: Path, config: Path, *args: str, profile: Path | None = None) -> list[str]:
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [
        sys.executable,
        *profiler,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]


def job_counts(stdout: str) -> dict[str, int]:
    """Per-rule counts from the dry run's 'Job stats' table."""
    lines = stdout.splitlines()
    counts = {}
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        # A batch rule's jobs count under its stage: generate_batch7 -> generate.
        stage = re.sub(r"_batch\d+$", "", parts[0])
        counts[stage] = counts.get(stage, 0) + int(parts[1])
    return counts


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--prompts", type=int, nargs="+", default=[1000, 10000])
    args.add_argument("--reps", type=int, default=2, help="dry runs per table size")
    args.add_argument(
        "--images-per-job",
        type=int,
        nargs="+",
        default=[None],
        help="images_per_job values to measure (default: the reference config's)",
    )
    args.add_argument(
        "--profile", action="store_true", help="one more dry run under cProfile: where time goes"
    )
    options = args.parse_args(argv)
    counts, reps = ([4], 1) if options.tiny else (options.prompts, options.reps)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        work = Path(tmp)
        configs = {
            (count, images): write_config(work, count, images)
            for count in counts
            for images in options.images_per_job
        }
        first = next(iter(configs.values()))
        checkpoint = measure_command(snakemake(work, first, "results/model/layers.json"), env=env)
        if checkpoint["rc"] != 0:
            raise RuntimeError(f"layer_table failed:\n{checkpoint['stderr'][-3000:]}")
        for (count, _images), config_path in configs.items():
            load_before = load()
            runs = [measure_command(snakemake(work, config_path, "-n"), env=env)]
            runs += [
                measure_command(snakemake(work, config_path, "-n"), env=env)
                for _ in range(reps - 1)
            ]
            failed = [run for run in runs if run["rc"] != 0]
            if failed:
                raise RuntimeError(f"dry run failed:\n{failed[0]['stderr'][-3000:]}")
            jobs = job_counts(runs[0]["stdout"])
            walls = sorted(run["wall_s"] for run in runs)
            results = {
                "wall_s": [round(run["wall_s"], 2) for run in runs],
                "wall_s_min": walls[0],
                "cpu_s": [round(run["cpu_s"], 2) for run in runs],
                "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
                "jobs": jobs,
                "load_before": load_before,
                "load_after": load(),
            }
            config = {
                "prompts": count,
                "grid": "reference: all layers x all steps",
                "layers": 16,
                "steps": 15,
                "images_per_job": yaml.safe_load(config_path.read_text())["images_per_job"],
                "target_s": 10 if count == 1000 else None,
                "tiny": options.tiny,
            }
            if options.profile:
                results["profile_top"] = profile_dry_run(work, config_path, env)
            record(options.results_dir, "dag_scale", "cpu", config, results)


def profile_dry_run(work: Path, config: Path, env: dict, top: int = 60) -> list[str]:
    """Where one dry run's time goes (cProfile, own process): the functions with the most
    cumulative time, then the most own time; the import machinery's frames are left out."""
    out = work / "dry-run.prof"
    done = measure_command(snakemake(work, config, "-n", profile=out), env=env)
    if done["rc"] != 0:
        raise RuntimeError(f"profiled dry run failed:\n{done['stderr'][-3000:]}")
    text = io.StringIO()
    stats = pstats.Stats(str(out), stream=text)
    stats.sort_stats("cumulative").print_stats(r"^(?!<frozen)", top)
    stats.sort_stats("tottime").print_stats(top // 3)
    return [line for line in text.getvalue().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
