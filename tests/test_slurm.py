"""The tiny study on a real one-node SLURM cluster, through `snakemake --profile slurm`.

tests/slurm/cluster.sh brings the cluster up from the distribution's packages (root only). Where
it cannot, the test is skipped with the reason, except where a run must prove cluster execution
(CI, or LDMPROBE_REQUIRE_SLURM=1): there it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow import REPO, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
CANNOT_HOST = 3  # cluster.sh's exit status when this machine cannot host a cluster
REQUIRED = os.environ.get("LDMPROBE_REQUIRE_SLURM") == "1" or bool(os.environ.get("CI"))
STATE = Path(os.environ.get("LDMPROBE_SLURM_STATE", "/tmp/ldmprobe-slurm"))
DAEMONS = {"slurmctld": "slurmctld.pid", "slurmd": "slurmd.pid", "munged": "munge/munged.pid"}
# GPU stages on `auto`: the rules then ask for a GPU (the cluster's fake one) and run on the CPU.
# One layer, no controls and four images (train, train, val, test) keep two runs short.
OVERRIDES = {
    "generation__device": "auto",
    "labels__device": "auto",
    "probe__layers": ["up3.2"],
    "controls__permuted_unet__enabled": False,
    "controls__vae__enabled": False,
    "controls__latent__enabled": False,
}
PROMPTS = """prompt_id,prompt,seed,split
lemon,a photo of a lemon on a wooden table,101,train
car,a red sports car parked on a street,202,train
owl,a snowy owl on a branch,222,val
boat,a sailing boat on a calm lake,666,test
"""
# The metrics table and what it needs; the figures add only more of the same kind of job.
TARGET = "results/tables/metrics.csv"
N_IMAGES = 4
IMAGES_PER_JOB = 2
# Single and group jobs, then array jobs (probe cells), as the executor reports them.
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)|array job .* SLURM job ID (\d+)")


def cluster(action: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER), action], capture_output=True, text=True, timeout=timeout
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def slurm():
    for action in ("install", "up"):
        result = cluster(action)
        if result.returncode == CANNOT_HOST:
            reason = result.stderr.strip()
            if REQUIRED:
                pytest.fail(f"the SLURM test must run here but cannot: {reason}")
            pytest.skip(reason)
        assert result.returncode == 0, f"cluster.sh {action} failed:\n{result.stderr}"
    pids = {name: int((STATE / file).read_text()) for name, file in DAEMONS.items()}
    yield pids
    down = cluster("down")
    assert down.returncode == 0, down.stderr
    # munged may have been running before us (cluster.sh then reuses it and leaves it alone).
    stopped = {name: pid for name, pid in pids.items() if not alive(pid)}
    assert {"slurmctld", "slurmd"} <= set(stopped), f"still running: {pids}"


def snakemake_slurm(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm` as typed in the repository root, outputs in ``workdir``."""
    command = [
        *[sys.executable, "-m", "snakemake"],
        "--profile",
        "slurm",
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        # The profile's 40 s suits a real queue; the test cluster answers at once.
        "--slurm-init-seconds-before-status-checks",
        "2",
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False
    )


def test_study_on_slurm_equals_local_run(slurm, tmp_path):
    local_dir, cluster_dir = tmp_path / "local", tmp_path / "slurm"
    for workdir in (local_dir, cluster_dir):
        workdir.mkdir()
        (workdir / "prompts.csv").write_text(PROMPTS)
    run_snakemake(local_dir, tiny_config(local_dir, **OVERRIDES), TARGET)
    # The local run has a job per image, the cluster run a job per batch of two.
    config = tiny_config(cluster_dir, **OVERRIDES, images_per_job=IMAGES_PER_JOB)
    tasks = yaml.safe_load(config.read_text())["labels"]["tasks"]

    result = snakemake_slurm(cluster_dir, config, TARGET)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]

    job_ids = {single or array for single, array in SUBMITTED.findall(output)}
    assert job_ids, f"no job went through sbatch:\n{output[-4000:]}"
    logs = {path.stem: path for path in (cluster_dir / ".snakemake/slurm_logs").rglob("*.log")}
    # An array task's log is <array job id>_<task>.log.
    assert job_ids == {stem.split("_")[0] for stem in logs}, sorted(logs)
    probe_logs = [stem for stem, path in logs.items() if "rule_probe" in path.parts]
    assert len(probe_logs) > 1 and len({stem.split("_")[0] for stem in probe_logs}) == 1
    # Each batch's generate and label jobs ran as one group job: one submission, one model
    # load per stage for the batch's images.
    grouped = [path for path in logs.values() if path.parent.name.startswith("group_image-batches")]
    assert len(grouped) == N_IMAGES // IMAGES_PER_JOB, sorted(map(str, logs.values()))
    for path in grouped:
        text = path.read_text()
        batch = re.search(r"localrule generate_batch(\d+):", text).group(1)
        assert text.count("localrule generate_batch") == 1
        assert text.count(f"localrule label_batch{batch}:") == len(tasks), text[-3000:]
    for batch in range(N_IMAGES // IMAGES_PER_JOB):
        job_log = (cluster_dir / f"results/logs/generate/batch{batch}.log").read_text()
        assert job_log.count("loading pipeline") == 1, job_log
        assert f"image {IMAGES_PER_JOB}/{IMAGES_PER_JOB}" in job_log
    # The group job got the GPU and partition the profile asked for (SLURM keeps a finished
    # job's record for MinJobAge seconds).
    record = subprocess.run(
        ["scontrol", "show", "job", grouped[0].stem], capture_output=True, text=True, check=True
    ).stdout
    assert "Partition=gpu" in record and "TresPerJob=gres:gpu:1" in record, record

    local = pd.read_csv(local_dir / "results/tables/metrics.csv")
    remote = pd.read_csv(cluster_dir / "results/tables/metrics.csv")
    pd.testing.assert_frame_equal(local, remote, check_exact=True)

    again = snakemake_slurm(cluster_dir, config, TARGET)
    assert again.returncode == 0, again.stderr[-4000:]
    assert not SUBMITTED.search(again.stdout + again.stderr)
    assert "Nothing to be done" in again.stdout + again.stderr
