"""Bad input, crashes, corruption and determinism, through the real Snakefile on a tiny study.

One uninterrupted reference run is shared by the module; each crash or corruption test works on
a copy of it, damages one stage, and must end with byte-identical metrics.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from workflow import REPO, SNAKEMAKE, jobs_to_run, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

TARGET = "results/tables/metrics.csv"
STEPS = 6
# One image per split keeps every stage present with the fewest jobs. The boat prompt is longer
# than the text encoder's 77 tokens, so generation must report the truncation.
PROMPTS = """prompt_id,prompt,seed,split
lemon,a photo of a lemon on a wooden table,101,train
owl,a snowy owl on a branch,222,val
boat,"a sailing boat on a calm lake at dawn, mist over the water, pine trees on the far shore, a red flag on the mast",666,test
"""  # noqa: E501


def study_config(workdir: Path, models: Path, **overrides) -> Path:
    (workdir / "prompts.csv").write_text(PROMPTS)
    settings = {
        # Models built once per test session, outside the study: no demo_model jobs.
        "models__demo_dir": None,
        "models__diffusion": {"id": str(models / "stable-diffusion")},
        "labels__tasks__depth__model": {"id": str(models / "dpt-depth")},
        "generation__steps": STEPS,
        "probe__layers": ["up3.2"],
        "probe__steps": [0, STEPS - 1],
        "prompts__val_fraction_of_train": 0.0,
    }
    return tiny_config(workdir, **{**settings, **overrides})


def rules_run(result) -> Counter:
    """Jobs a real run started, per rule, from its log."""
    return Counter(re.findall(r"^local(?:rule|checkpoint) (\w+):$", result.stderr, re.MULTILINE))


@pytest.fixture(scope="module")
def reference(demo_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    config = study_config(workdir, demo_models)
    result = run_snakemake(workdir, config, TARGET)
    return workdir, result


@pytest.fixture
def copy_of_reference(reference, demo_models, tmp_path):
    """The reference study copied with its Snakemake metadata, and its config rewritten there."""
    workdir = tmp_path / "study"
    shutil.copytree(reference[0], workdir, symlinks=True)
    return workdir, study_config(workdir, demo_models)


def assert_same_metrics(workdir: Path, reference_dir: Path) -> None:
    assert (workdir / TARGET).read_bytes() == (reference_dir / TARGET).read_bytes()
    per_image = "results/tables/per_image_metrics.csv.gz"
    pd.testing.assert_frame_equal(
        pd.read_csv(workdir / per_image), pd.read_csv(reference_dir / per_image)
    )


def arrays_of(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {
        path: np.asarray(node[:])
        for path, node in group.members(max_depth=None)
        if isinstance(node, zarr.Array)
    }


def assert_same_store(store: Path, reference_store: Path) -> None:
    ours, theirs = arrays_of(store), arrays_of(reference_store)
    assert "latents/x0" in theirs and "unet/cond/up3.2" in theirs
    assert sorted(ours) == sorted(theirs)
    for path, values in theirs.items():
        assert np.array_equal(ours[path], values), path


def leftovers(workdir: Path) -> list[Path]:
    return list((workdir / "results").rglob(".*.tmp-*"))


# --- the reference run itself -----------------------------------------------------------------


def test_reference_run_applies_the_profile_and_checks_the_disk(reference):
    workdir, result = reference
    assert "Provided resources: gpu=" in result.stderr  # from profiles/default
    assert "ldmprobe: free space: this run writes about" in result.stderr
    assert not leftovers(workdir)


def test_long_prompt_truncation_is_reported(reference):
    import json

    workdir, _ = reference
    meta = json.loads((workdir / "results/generation/boat/666/meta.json").read_text())
    assert meta["prompt_truncated"] and meta["prompt_tokens"] > 77
    log = (workdir / "results/logs/generate/boat/666.log").read_text()
    assert "truncated" in log
    lemon = json.loads((workdir / "results/generation/lemon/101/meta.json").read_text())
    assert not lemon["prompt_truncated"]


# --- bad input: one message, before any job -----------------------------------------------------

BAD_CONFIGS = {
    "unknown key": (
        {"generation__stepz": 15},
        ["config key 'generation'", "'stepz' was unexpected", "allowed keys: ["],
    ),
    "wrong type": ({"generation__steps": "15"}, ["'generation.steps': '15' is not of type"]),
    "steps out of schema range": ({"generation__steps": 0}, ["'generation.steps': 0 is less"]),
    "unknown task": (
        {"labels__tasks": {"normals": {"labeler": "dpt", "model": {"id": "x"}}}},
        ["'labels.tasks'", "'normals' is not allowed; allowed: ['saliency', 'depth', 'shading']"],
    ),
    "unknown labeler": (
        {"labels__tasks__depth__labeler": "midas"},
        ["'labels.tasks.depth.labeler': 'midas' is not a known labeler; allowed: [", "'dpt'"],
    ),
    "cfg half": (
        {"generation__cfg_half": "left"},
        ["'generation.cfg_half': 'left' is not allowed; allowed: ['cond', 'uncond', 'both']"],
    ),
    "probed half not stored": (
        {"probe__cfg_half": "uncond"},
        ["'probe.cfg_half': 'uncond' is not stored", "allowed: ['cond']"],
    ),
}


def assert_stopped_before_any_job(result, fragments: list[str]) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]
    messages = re.findall(r"^ldmprobe: (?!free space)", result.stderr, re.MULTILINE)
    assert len(messages) == 1
    assert jobs_to_run(result) == {}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_stops_before_any_job(case, demo_models, tmp_path):
    overrides, fragments = BAD_CONFIGS[case]
    config = study_config(tmp_path, demo_models, **overrides)
    result = run_snakemake(tmp_path, config, "-n", TARGET, check=False)
    assert_stopped_before_any_job(result, fragments)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ("../x,a prompt,5,test", ["prompts.csv, line 5: prompt id '../x'", "folder name"]),
        ("kite,a kite,-1,test", ["prompts.csv, line 5: seed -1 is out of range"]),
    ],
    ids=["unsafe id", "negative seed"],
)
def test_bad_prompt_table_stops_before_any_job(row, fragments, demo_models, tmp_path):
    config = study_config(tmp_path, demo_models)
    (tmp_path / "prompts.csv").write_text(PROMPTS + row + "\n")
    result = run_snakemake(tmp_path, config, "-n", TARGET, check=False)
    assert_stopped_before_any_job(result, fragments)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            {"probe__layers": ["up3.*", "up9.*"]},
            ["probe.layers: pattern(s) ['up9.*'] match no layer", "available layers: down0.0"],
        ),
        (
            {"probe__steps": [0, STEPS]},
            [f"'probe.steps': [{STEPS}] out of range", f"steps 0..{STEPS - 1}"],
        ),
    ],
    ids=["layer pattern matching nothing", "probe step out of range"],
)
def test_probe_grid_errors_stop_before_any_probe(
    overrides, fragments, copy_of_reference, demo_models
):
    """These need the layer table, so they are found once the layer_table checkpoint exists."""
    workdir, _ = copy_of_reference
    config = study_config(workdir, demo_models, **overrides)
    result = run_snakemake(workdir, config, "-n", TARGET, check=False)
    assert_stopped_before_any_job(result, fragments)


def test_disk_preflight_stops_and_can_be_overridden(demo_models, tmp_path):
    config = study_config(tmp_path, demo_models, preflight={"free_space_factor": 1e15})
    result = run_snakemake(tmp_path, config, "-n", TARGET, check=False)
    assert_stopped_before_any_job(
        result, ["not enough free space for 'results'", "3 images", "1e+15"]
    )
    # The override the message suggests: a second config file, merged over the first.
    override = tmp_path / "no-space-check.yaml"
    override.write_text("preflight: {check_free_space: false}\n")
    result = run_snakemake(
        tmp_path, config, "-n", TARGET, "--configfile", str(config), str(override)
    )
    assert "free space: not checked (preflight.check_free_space is false)" in result.stderr
    assert "layer_table" in jobs_to_run(result)  # the run goes ahead


# --- crashes: SIGKILL the whole run at a point, rerun, same metrics ------------------------------


def start_snakemake(workdir: Path, config: Path, log: Path, *args: str) -> subprocess.Popen:
    """Like ``run_snakemake`` but in the background, in its own process group."""
    command = [
        *SNAKEMAKE,
        *("--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)),
        *("--configfile", str(config), "--cores", "2", *args),
    ]
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )


def group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def kill_when(workdir: Path, config: Path, ready, timeout: float = 300) -> None:
    """Run to ``TARGET`` and SIGKILL snakemake and all its jobs as soon as ``ready()``."""
    log = workdir / "killed-run.log"
    process = start_snakemake(workdir, config, log, TARGET)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before the kill point:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kill point not reached in {timeout} s:\n{log.read_text()}")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for _ in range(100):
        if not group_members(process.pid):
            break
        time.sleep(0.05)
    assert not group_members(process.pid), "a job outlived the kill"


def resume(workdir: Path, config: Path):
    """What a user does after a crash: release the dead run's lock, run again."""
    run_snakemake(workdir, config, "--unlock")
    return run_snakemake(workdir, config, TARGET)


def test_kill_while_a_store_is_written(copy_of_reference, reference):
    workdir, config = copy_of_reference
    image = workdir / "results/generation/boat/666"
    shutil.rmtree(image)

    def store_half_written():
        return any(
            any(tmp.glob("unet/cond/*/c/*/*/*")) for tmp in image.glob(".activations.zarr.tmp-*")
        )

    kill_when(workdir, config, store_half_written)
    assert list(image.glob(".activations.zarr.tmp-*")), "the kill missed the write"
    assert not (image / "activations.zarr").exists()

    result = resume(workdir, config)
    assert rules_run(result) == Counter(generate=1, label=1, dataset=1, probe=2, aggregate=1)
    assert_same_metrics(workdir, reference[0])
    assert_same_store(image / "activations.zarr", reference[0] / image.relative_to(workdir))
    assert not leftovers(workdir)


def test_kill_during_labels(copy_of_reference, reference):
    workdir, config = copy_of_reference
    labels = workdir / "results/labels"
    shutil.rmtree(labels)
    shutil.rmtree(workdir / "results/logs/label")

    kill_when(workdir, config, lambda: any(labels.rglob("*.npz")))
    from ldmprobe.labels import load_label

    done = list(labels.rglob("*.npz"))
    assert 1 <= len(done) < 3
    for path in done:  # whatever is there is whole
        load_label(path)

    result = resume(workdir, config)
    counts = rules_run(result)
    assert "generate" not in counts and "layer_table" not in counts
    assert 3 - len(done) <= counts["label"] <= 3
    assert_same_metrics(workdir, reference[0])
    assert not leftovers(workdir)


def test_kill_during_probes(copy_of_reference, reference):
    workdir, config = copy_of_reference
    for stage in ("probes", "tables", "logs/probe"):
        shutil.rmtree(workdir / "results" / stage)
    logs = workdir / "results/logs/probe"

    def probe_training():
        return any("read 3 images" in log.read_text() for log in logs.rglob("*.log"))

    kill_when(workdir, config, probe_training)
    assert not (workdir / TARGET).exists()
    for table in (workdir / "results/probes").rglob("metrics.csv"):
        assert len(pd.read_csv(table)) == 3  # one test image x three metrics: whole

    result = resume(workdir, config)
    counts = rules_run(result)
    assert set(counts) == {"probe", "aggregate"} and counts["probe"] >= 1
    assert_same_metrics(workdir, reference[0])
    assert not leftovers(workdir)


# --- corruption: the consuming job names the file and its rule; deleting it heals --------------


def test_truncated_chunk_names_store_and_rule_and_heals(copy_of_reference, reference):
    workdir, config = copy_of_reference
    store = "results/generation/boat/666/activations.zarr"
    chunk = workdir / store / f"unet/cond/up3.2/c/{STEPS - 1}/0/0"
    chunk.write_bytes(chunk.read_bytes()[:7])

    failed = run_snakemake(workdir, config, "-R", "probe", TARGET, check=False)
    assert failed.returncode != 0
    log = (workdir / f"results/logs/probe/unet/up3.2/step{STEPS - 1}.log").read_text()
    for text in (log, failed.stderr):  # the job's log, and what snakemake shows of it
        assert f"activations store {store}" in text and "rule 'generate'" in text
    assert "Error in rule probe" in failed.stderr

    shutil.rmtree(workdir / store)
    healed = run_snakemake(workdir, config, TARGET)
    assert rules_run(healed)["generate"] == 1
    assert_same_metrics(workdir, reference[0])


# --- determinism: two runs from scratch ---------------------------------------------------------


def test_two_runs_from_scratch_are_identical(reference, demo_models, tmp_path):
    config = study_config(tmp_path, demo_models)
    run_snakemake(tmp_path, config, TARGET)
    assert_same_metrics(tmp_path, reference[0])
    for image in ("lemon/101", "owl/222", "boat/666"):
        ours = tmp_path / "results/generation" / image
        theirs = reference[0] / "results/generation" / image
        assert_same_store(ours / "activations.zarr", theirs / "activations.zarr")
        assert (ours / "image.png").read_bytes() == (theirs / "image.png").read_bytes()
        with (
            np.load(tmp_path / f"results/labels/depth/{image}.npz") as a,
            np.load(reference[0] / f"results/labels/depth/{image}.npz") as b,
        ):
            assert np.array_equal(a["preview_target"], b["preview_target"])
