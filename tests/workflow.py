"""Running the real Snakefile on a tiny study, in a temporary working directory.

Every workflow test goes through ``run_snakemake``: the repository's Snakefile, profiles and
package, a config derived from ``config/demo.yaml``, outputs under the test's own directory.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY_PROMPTS = """prompt_id,prompt,seed,split
lemon,a photo of a lemon on a wooden table,101,train
car,a red sports car parked on a street,202,train
dog,a golden retriever sitting in the grass,303,train
mug,"a white coffee mug on a desk, studio light",404,train
owl,a snowy owl on a branch,222,val
boat,a sailing boat on a calm lake,666,test
house,a small house in a snowy field,444,test
"""
TINY_KEYS = [
    (row["prompt_id"], int(row["seed"])) for row in csv.DictReader(io.StringIO(TINY_PROMPTS))
]


def tiny_config(workdir: Path, **overrides) -> Path:
    """A small, fast study: 7 prompts at 64 px, 3 layers x 2 steps. Returns the config path."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    prompts = workdir / "prompts.csv"
    if not prompts.exists():
        prompts.write_text(TINY_PROMPTS)
    config["prompts"]["files"] = [{"path": str(prompts)}]
    config["models"]["demo_dir"] = "resources/demo-models"
    # A job per image, the finest grain; tests of batches ask for them.
    config["images_per_job"] = 1
    config["generation"].update(height=64, width=64)
    config["probe"].update(layers=["down0.0", "down2.1", "up3.2"], steps=[0, 14])
    config["probe"]["defaults"]["epochs"] = 5
    config["metrics"]["bootstrap_resamples"] = 200
    config["figures"]["example_images"] = 1
    # One task keeps the tiny study to one label job per image; the saliency and shading
    # labelers of the demo are tested through the label job in tests/test_labelers.py.
    config["labels"]["tasks"] = {"depth": config["labels"]["tasks"]["depth"]}
    # The VGG-16 experiment has its own workflow test (tests/test_classify.py).
    config["classification"]["enabled"] = False
    merged = copy.deepcopy(config)
    for dotted, value in overrides.items():
        section = merged
        *parents, leaf = dotted.split("__")
        for key in parents:
            section = section[key]
        section[leaf] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return path


def reordered(value):
    """``value`` with the keys of every mapping in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


class Written(str):
    """A scalar written as this text, unquoted: what a person typing it gets."""


def _write_plain(dumper, value):
    tag = dumper.resolve(yaml.ScalarNode, str(value), (True, False))
    return dumper.represent_scalar(tag, str(value))


yaml.SafeDumper.add_representer(Written, _write_plain)


def respelled(value, key=None):
    """Every number of a config written another way: floats in exponent notation without a
    dot (``1e-3``, ``7.5e0``: YAML 1.1 reads them as strings), integers with a fraction
    (``15.0``). Labeler options (free-form, not in the schema) are left as they are."""
    if key == "options" or isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return {k: respelled(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [respelled(item) for item in value]
    if isinstance(value, float):
        mantissa, exponent = f"{value:e}".split("e")
        return Written(f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}")
    if isinstance(value, int):
        return Written(f"{value}.0")
    return value


REWRITES = {
    # Every mapping's keys in another order.
    "reordered": lambda config: yaml.safe_dump(reordered(config), sort_keys=False),
    # Flow style throughout, a comment, keys sorted as a tool writing YAML does.
    "flow-style": lambda config: (
        "# rewritten by a tool\n" + yaml.safe_dump(config, default_flow_style=True, width=60)
    ),
    # Numbers spelled differently.
    "numbers": lambda config: yaml.safe_dump(respelled(config), sort_keys=False),
}


def run_snakemake(workdir: Path, config: Path, *args: str, check: bool = True, timeout=900):
    """Run the repository's workflow in ``workdir``; returns the CompletedProcess."""
    command = [
        *SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def jobs_to_run(result) -> dict[str, int]:
    """Per-rule job counts from a dry run's 'Job stats' table (empty when nothing to do)."""
    counts = {}
    lines = result.stdout.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts
