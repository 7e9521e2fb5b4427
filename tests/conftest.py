"""Shared fixtures: the demo's random-weight models, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    from ldmprobe.models.demo_models import build_demo_model

    root = tmp_path_factory.mktemp("demo-models")
    for kind in ("stable-diffusion", "dpt-depth"):
        build_demo_model(kind, root / kind, seed=0)
    return root


@pytest.fixture(scope="session")
def demo_pipe(demo_models):
    from ldmprobe.models import ModelRef, load_diffusion_pipeline

    ref = ModelRef("models.diffusion", str(demo_models / "stable-diffusion"))
    return load_diffusion_pipeline(ref, "lms", "float32", "cpu")
