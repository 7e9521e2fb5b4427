"""Issue 5, per-image cost on a real SLURM: the images' generate and label jobs through
``snakemake --profile slurm`` on the one-node test cluster (tests/slurm/cluster.sh), three ways:

- ``per-image``: ``images_per_job: 1`` and ``--group-components images=1``: a SLURM job per
  image, holding its generate and label jobs, each its own process and model load;
- ``grouped``: ``images_per_job: 1`` with the profile's grouping (16 images): one SLURM job,
  but still a process and a model load for every image's every stage;
- ``batched``: ``images_per_job`` = all images: one SLURM job, one load per stage.

Per image: the run's wall time over the images, and from the jobs' own logs the model loads
(with the imports they trigger) and the work (generation, labelling). ``rest`` is the wall
time less both sums: submission, queue, status polling, job and process starts. Jobs may
overlap on the cluster's two fake GPUs, so the sums can exceed their share of the wall time
and ``rest`` is then a lower bound. Needs root (the cluster); the tiny demo model makes the
work cheap, so the overheads dominate, as the model load does on a GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import REPO, load, measure_command, parser, record

sys.path.insert(0, str(REPO / "tests"))
from workflow import tiny_config  # noqa: E402  (the tests' tiny study, shared)

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PROMPTS = [
    ("lemon", "a photo of a lemon on a wooden table", 101),
    ("car", "a red sports car parked on a street", 202),
    ("dog", "a golden retriever sitting in the grass", 303),
    ("mug", "a white coffee mug on a desk", 404),
    ("owl", "a snowy owl on a branch", 222),
    ("boat", "a sailing boat on a calm lake", 666),
    ("house", "a small house in a snowy field", 444),
    ("kite", "a kite over a beach", 555),
]
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")
# The seconds the generate and label jobs log (ldmprobe.jobs): model loads and work per image.
GENERATE_LOAD = r"pipeline loaded in ([\d.]+) s"
GENERATE_WORK = r"generated in ([\d.]+) s"
LABEL_LOAD = r"labeler .* loaded in ([\d.]+) s"
LABEL_WORK = r"previews for \w+ in ([\d.]+) s"


def logged_seconds(logs: list[Path], pattern: str) -> float:
    """Sum of the seconds the jobs' logs give in lines matching ``pattern`` (one group)."""
    return sum(float(found) for log in logs for found in re.findall(pattern, log.read_text()))


def run(work: Path, images_per_job: int, grouped: bool, targets: list[str]) -> dict:
    work.mkdir()
    table = "prompt_id,prompt,seed,split\n" + "".join(
        f"{pid},{prompt},{seed},{split}\n"
        for (pid, prompt, seed), split in zip(PROMPTS, ["train"] * 6 + ["val", "test"], strict=True)
    )
    (work / "prompts.csv").write_text(table)
    config = tiny_config(
        work,
        generation__device="auto",
        labels__device="auto",
        probe__layers=["up3.2"],
        controls__permuted_unet__enabled=False,
        controls__vae__enabled=False,
        controls__latent__enabled=False,
        images_per_job=images_per_job,
    )
    # The demo models first, locally: what is measured is the images' jobs.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [
        sys.executable,
        "-m",
        "snakemake",
        "--directory",
        str(work),
        "--configfile",
        str(config),
    ]
    subprocess.run(
        [
            *base,
            "--cores",
            "2",
            "resources/demo-models/stable-diffusion",
            "resources/demo-models/dpt-depth",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    # Targets first: --configfile and --group-components take every value that follows them.
    command = [
        *base[:3],
        *targets,
        *base[3:],
        "--profile",
        "slurm",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *([] if grouped else ["--group-components", "images=1", "image-batches=1"]),
    ]
    result = measure_command(command, env=env, cwd=REPO)
    if result["rc"] != 0:
        raise RuntimeError(f"snakemake failed:\n{result['stderr'][-4000:]}")
    generate_logs = sorted((work / "results/logs/generate").rglob("*.log"))
    label_logs = sorted((work / "results/logs/label").rglob("*.log"))
    n_images = len(PROMPTS)
    wall = result["wall_s"]
    load_s = logged_seconds(generate_logs, GENERATE_LOAD) + logged_seconds(label_logs, LABEL_LOAD)
    work_s = logged_seconds(generate_logs, GENERATE_WORK) + logged_seconds(label_logs, LABEL_WORK)
    return {
        "images": n_images,
        "slurm_jobs": len(set(SUBMITTED.findall(result["stdout"] + result["stderr"]))),
        "generate_jobs": len(generate_logs),
        "label_jobs": len(label_logs),
        "wall_s": round(wall, 1),
        "wall_per_image_s": round(wall / n_images, 2),
        "model_loads_per_image_s": round(load_s / n_images, 2),
        "generation_and_labels_per_image_s": round(work_s / n_images, 2),
        "rest_per_image_s": round((wall - load_s - work_s) / n_images, 2),
    }


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    options = args.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_cluster.py needs root: tests/slurm/cluster.sh starts SLURM")
    for action in ("install", "up"):
        subprocess.run(["bash", str(CLUSTER), action], check=True)
    targets = [f"results/labels/depth/{pid}/{seed}.npz" for pid, _prompt, seed in PROMPTS]
    ways = {"per-image": (1, False), "grouped": (1, True), "batched": (len(PROMPTS), True)}
    if options.tiny:
        ways = {"batched": ways["batched"]}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            for way, (images_per_job, grouped) in ways.items():
                load_before = load()
                results = run(Path(tmp) / way, images_per_job, grouped, targets)
                results.update(load_before=load_before, load_after=load())
                config = {
                    "way": way,
                    "images_per_job": images_per_job,
                    "grouped": grouped,
                    "model": "demo (random weights), 64 px, 15 steps, depth labeler",
                }
                print(way, results, flush=True)
                record(options.results_dir, "cluster_images", "cpu", config, results)
    finally:
        subprocess.run(["bash", str(CLUSTER), "down"], check=True)


if __name__ == "__main__":
    main()
