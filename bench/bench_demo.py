"""Item 5, end to end: the offline demo's wall time (``make demo``: the workflow, then the
report) with ``--cores`` cores, from an empty working directory.

The repository's Snakefile and ``config/demo.yaml`` run in a temp dir (``--directory``), so
nothing is written into the checkout; the prompt tables are the repository's. The workflow
builds the demo models itself, as ``make demo`` does, so their build time counts. The 2-core
target only means something on an otherwise idle machine: the record keeps the load average
before and after. ``--tiny`` only dry-runs the demo (the script's mechanics, no timing).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml
from benchlib import REPO, load, measure_command, parser, record


def write_config(work: Path) -> Path:
    """config/demo.yaml with the repository's prompt tables given as absolute paths."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    tables = [config["prompts"]]
    if config.get("classification", {}).get("enabled"):
        tables.append(config["classification"]["prompts"])
    for table in tables:
        for entry in table["files"]:
            entry["path"] = str(REPO / entry["path"])
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(work: Path, config: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        *args,
    ]


def run_and_report(work: Path, config: Path, cores: list[str], env: dict, what: str):
    """The workflow, then its report (a second Snakemake call): each one's measure_command."""
    run = measure_command(snakemake(work, config, *cores), env=env)
    if run["rc"] != 0:
        raise RuntimeError(f"{what} run failed:\n{run['stderr'][-3000:]}")
    report = measure_command(
        snakemake(work, config, "--report", str(work / "results" / "report.html")), env=env
    )
    if report["rc"] != 0:
        raise RuntimeError(f"{what} report failed:\n{report['stderr'][-3000:]}")
    return run, report


def job_total(stdout: str) -> int | None:
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--cores", type=int, default=2)
    options = args.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        work = Path(tmp)
        config = write_config(work)
        cores = ["--cores", str(options.cores)]
        plan = measure_command(snakemake(work, config, *cores, "-n"), env=env)
        if plan["rc"] != 0:
            raise RuntimeError(f"demo dry run failed:\n{plan['stderr'][-3000:]}")
        results = {"jobs": job_total(plan["stdout"]), "dry_run_s": round(plan["wall_s"], 2)}
        if not options.tiny:
            load_before = load()
            run, report = run_and_report(work, config, cores, env, "demo")
            results.update(
                workflow_s=round(run["wall_s"], 1),
                workflow_cpu_s=round(run["cpu_s"], 1),
                report_s=round(report["wall_s"], 1),
                total_s=round(run["wall_s"] + report["wall_s"], 1),
                peak_rss_bytes=run["peak_rss_bytes"],
                load_before=load_before,
            )
        settings = {
            "config": "config/demo.yaml",
            "cores": options.cores,
            "images_per_job": yaml.safe_load(config.read_text()).get("images_per_job", 1),
            "target_s": 300,
            "tiny": options.tiny,
        }
        record(options.results_dir, "demo_end_to_end", "cpu", settings, results)


if __name__ == "__main__":
    main()
