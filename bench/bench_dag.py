"""Item 4, DAG scale: ``snakemake -n`` time and peak memory for the reference grid (every
layer x every step) with large prompt tables.

The reference config (config/config.yaml) needs SD weights at parse time (preflight), so the
model ids point at the demo architecture (the same 16 self-attention layers, 15 U-Net calls,
512 px) saved into a temp dir; the layer_table checkpoint runs once, so the dry run sees the
whole grid. Prompt tables are generated, without a split column (splits come from the ids).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml
from benchlib import REPO, load, measure_command, parser, record

from ldmprobe.config import load_schema


def write_prompts(path: Path, count: int) -> None:
    lines = ["prompt_id,prompt,seed"]
    lines += [f'p{i:06d},"a photo of object {i}, on a table",{1000 + i}' for i in range(count)]
    path.write_text("\n".join(lines) + "\n")


def write_config(work: Path, prompts: Path) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["prompts"]["files"] = [{"path": str(prompts)}]
    config["models"]["diffusion"]["id"] = str(work / "models" / "stable-diffusion")
    config["labels"]["tasks"]["depth"]["model"]["id"] = str(work / "models" / "dpt-depth")
    if "preflight" in load_schema()["properties"]:
        # A dry run writes nothing; the reference study's terabytes need not fit in /tmp.
        config["preflight"] = {"check_free_space": False}
    path = work / f"config-{prompts.stem}.yaml"
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
        counts[parts[0]] = int(parts[1])
    return counts


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--prompts", type=int, nargs="+", default=[1000, 10000])
    args.add_argument("--reps", type=int, default=2, help="dry runs per table size")
    options = args.parse_args(argv)
    counts, reps = ([20], 1) if options.tiny else (options.prompts, options.reps)

    from ldmprobe.demo_models import build_demo_model

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        work = Path(tmp)
        for kind in ("stable-diffusion", "dpt-depth"):
            build_demo_model(kind, work / "models" / kind)
        configs = {}
        for count in counts:
            write_prompts(work / f"prompts-{count}.csv", count)
            configs[count] = write_config(work, work / f"prompts-{count}.csv")
        checkpoint = measure_command(
            snakemake(work, configs[counts[0]], "results/model/layers.json"), env=env
        )
        if checkpoint["rc"] != 0:
            raise RuntimeError(f"layer_table failed:\n{checkpoint['stderr'][-3000:]}")
        for count in counts:
            load_before = load()
            runs = [measure_command(snakemake(work, configs[count], "-n"), env=env)]
            runs += [
                measure_command(snakemake(work, configs[count], "-n"), env=env)
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
                "target_s": 10 if count == 1000 else None,
                "tiny": options.tiny,
            }
            record(options.results_dir, "dag_scale", "cpu", config, results)


if __name__ == "__main__":
    main()
