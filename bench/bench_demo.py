"""Item 5, end to end: the offline demo's wall time (``make demo``: the workflow, then the
report) with ``--cores`` cores, from a fresh clone of the repository's HEAD.

The demo config (``--config``, by default the Makefile's: the world study at demo size) runs
in a clone, as a user's ``make demo`` would after ``git clone``: committed weights, prompt
tables and any demo models the workflow builds itself all count. The 2-core target only means
something on an otherwise idle machine: the record keeps the load average before and the
commit measured. ``--tiny`` only dry-runs the demo (the script's mechanics, no timing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from benchlib import REPO, load, measure_command, parser, record

DEMO_CONFIG = "config/world-demo.yaml"


def clone(work: Path) -> tuple[Path, str]:
    """A clone of the repository's HEAD in ``work``, and the commit it holds."""
    checkout = work / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return checkout, commit


def snakemake(work: Path, config: str | Path, *args: str, snakefile: Path | None = None):
    """The Snakemake command run in ``work`` with ``config`` (relative to ``work``, or
    absolute); the Snakefile is ``work``'s own (a clone) unless ``snakefile`` names one."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile or work / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / config),
        *args,
    ]


def run_and_report(
    work: Path,
    config: str | Path,
    cores: list[str],
    env: dict,
    what: str,
    snakefile: Path | None = None,
):
    """The workflow, then its report (a second Snakemake call): each one's measure_command."""
    run = measure_command(snakemake(work, config, *cores, snakefile=snakefile), env=env)
    if run["rc"] != 0:
        raise RuntimeError(f"{what} run failed:\n{run['stderr'][-3000:]}")
    report = measure_command(
        snakemake(
            work, config, "--report", str(work / "results" / "report.html"), snakefile=snakefile
        ),
        env=env,
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
    args.add_argument("--config", default=DEMO_CONFIG, help="demo config, relative to the repo")
    options = args.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        work, commit = clone(Path(tmp))
        config = options.config
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
            "config": config,
            "commit": commit,
            "cores": options.cores,
            "images_per_job": yaml.safe_load((work / config).read_text()).get("images_per_job", 1),
            "target_s": 300,
            "tiny": options.tiny,
        }
        record(options.results_dir, "demo_end_to_end", "cpu", settings, results)


if __name__ == "__main__":
    main()
