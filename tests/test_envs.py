"""The per-rule-family conda environments (envs/*.yaml, for `--sdm conda` on a cluster) parse,
install this package, and pin every package to the version pyproject.toml pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {canonicalize_name(req.name): req for req in requirements}


def disagreements(env: dict, project: dict[str, Requirement]) -> list[str]:
    """Pip lines of an env that name no project dependency or pin another version."""
    (pip,) = [item["pip"] for item in env["dependencies"] if isinstance(item, dict)]
    problems = []
    for line in pip:
        if line.startswith("-"):
            continue
        requirement = Requirement(line)
        wanted = project.get(canonicalize_name(requirement.name))
        if wanted is None:
            problems.append(f"{line}: not a dependency in pyproject.toml")
        elif requirement.specifier != wanted.specifier:
            problems.append(f"{line}: pyproject.toml has {wanted}")
    return problems


def test_there_are_envs_and_every_rule_uses_one():
    assert {path.stem for path in ENVS} >= {"generate", "labels", "probes", "report"}
    used = set()
    for rules in (REPO / "rules").glob("*.smk"):
        used |= set(re.findall(r'conda:\s*\n\s*"\.\./(envs/[^"]+)"', rules.read_text()))
    assert used, "no rule declares a conda environment"
    missing = {path for path in used if not (REPO / path).is_file()}
    assert not missing, f"rules name environments that do not exist: {missing}"


@pytest.mark.parametrize("path", ENVS, ids=lambda path: path.stem)
def test_env_parses_and_agrees_with_pyproject(path):
    env = yaml.safe_load(path.read_text())
    assert set(env) >= {"channels", "dependencies"}
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]
    (pip,) = [item["pip"] for item in env["dependencies"] if isinstance(item, dict)]
    # The package itself, from the repository root (an env file's paths are relative to it).
    assert "-e .." in pip
    assert sum("==" in line for line in pip) >= 3, "almost nothing pinned"
    assert disagreements(env, project_requirements()) == []


def test_a_drifted_pin_or_stray_package_is_caught():
    env = yaml.safe_load((REPO / "envs/generate.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    pip[:] = [re.sub(r"^torch==.*$", "torch==0.0.1", line) for line in pip] + ["requests==2.0"]
    problems = disagreements(env, project_requirements())
    assert len(problems) == 2
    assert problems[0].startswith("torch==0.0.1") and "requests" in problems[1]
