"""Damaged model files: each weight format cut short is found before any job, with its sizes and
how to fetch it again; complete files pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ldmprobe.labels import label_model_ref
from ldmprobe.models import DamagedModelError, MissingModelError, ModelRef, preflight
from ldmprobe.models.weightfiles import check_weight_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_safetensors(path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"a": np.ones((64, 32), np.float32), "b": np.zeros(100, np.float16)}, str(path))


def write_onnx(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    torch.onnx.export(net, (torch.zeros(1, 32),), str(path), dynamo=False, opset_version=17)


def write_pth(path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torch.nn.Linear(64, 64).state_dict(), path)


WRITERS = {"safetensors": write_safetensors, "onnx": write_onnx, "pth": write_pth}


def truncate(path: Path, keep: float) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return len(data)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_complete_files_pass(kind, tmp_path):
    path = tmp_path / f"weights.{kind}"
    WRITERS[kind](path)
    assert check_weight_file(path) is None


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.02])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_file_cut_short_is_found(kind, keep, tmp_path):
    path = tmp_path / f"weights.{kind}"
    WRITERS[kind](path)
    full = truncate(path, keep)
    damage = check_weight_file(path)
    assert damage is not None and damage.actual == path.stat().st_size
    if damage.exact:
        assert damage.expected == full
    else:  # a lower bound, past the end it has
        assert path.stat().st_size < damage.expected <= full


def test_safetensors_expected_size_is_exact(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path)
    full = truncate(path, 0.7)
    damage = check_weight_file(path)
    assert damage.exact and damage.expected == full
    assert damage.sizes() == f"is {path.stat().st_size:,} bytes; its format says {full:,}"


def test_preflight_names_every_damaged_file_with_sizes_and_how_to_fetch_it(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # A diffusers pipeline in the Hugging Face cache: its U-Net cut short; the safety checker,
    # which the loader never reads, cut short too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--sd"
    snapshot = repo / "snapshots" / COMMIT
    for component in ("unet", "vae", "safety_checker"):
        write_safetensors(snapshot / component / "diffusion_pytorch_model.safetensors")
    (snapshot / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            }
        )
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    unet = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    unet_size = truncate(unet, 0.5)
    truncate(snapshot / "safety_checker" / "diffusion_pytorch_model.safetensors", 0.5)
    # Labelers in local folders: rembg's ONNX file and TRACER's checkpoint, cut short.
    write_onnx(tmp_path / "rembg" / "u2netp.onnx")
    truncate(tmp_path / "rembg" / "u2netp.onnx", 0.5)
    write_pth(tmp_path / "tracer" / "tracer_b7.pth")
    truncate(tmp_path / "tracer" / "tracer_b7.pth", 0.5)
    refs = [
        ModelRef("models.diffusion", "org/sd"),
        label_model_ref(
            "saliency",
            {
                "labeler": "rembg",
                "model": {"id": str(tmp_path / "rembg")},
                "options": {"session": "u2netp"},
            },
        ),
        label_model_ref("depth", {"labeler": "tracer", "model": {"id": str(tmp_path / "tracer")}}),
    ]

    with pytest.raises(DamagedModelError) as raised:
        preflight(refs, allow_download=False)
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("These model files are incomplete")
    assert len(lines) == 4, lines  # the safety checker is not among them
    assert lines[1] == (
        f"  - models.diffusion: {unet} is {unet.stat().st_size:,} bytes; its format says "
        f"{unet_size:,}. To repair it, fetch it again on a machine with internet: "
        "`hf download org/sd unet/diffusion_pytorch_model.safetensors --force-download` "
        "(then copy the cache here)."
    )
    assert f"labels.tasks.saliency.model: {tmp_path / 'rembg' / 'u2netp.onnx'} is" in lines[2]
    assert "copy it again from where the folder" in lines[2] and "rembg d u2netp" in lines[2]
    assert f"labels.tasks.depth.model: {tmp_path / 'tracer' / 'tracer_b7.pth'} is" in lines[3]
    # allow_download does not fetch again what the cache already holds: still found.
    with pytest.raises(DamagedModelError):
        preflight(refs, allow_download=True)


def test_missing_and_damaged_models_are_listed_together(tmp_path):
    write_safetensors(tmp_path / "depth" / "model.safetensors")
    truncate(tmp_path / "depth" / "model.safetensors", 0.9)
    refs = [
        ModelRef("labels.tasks.depth.model", str(tmp_path / "depth")),
        ModelRef("models.diffusion", str(tmp_path / "absent")),
    ]
    with pytest.raises(MissingModelError) as raised:
        preflight(refs, allow_download=False)
    message = str(raised.value)
    assert "'models.diffusion.id'" in message and "model.safetensors is" in message
    (tmp_path / "depth" / "model.safetensors").unlink()
    write_safetensors(tmp_path / "depth" / "model.safetensors")
    preflight(refs[:1], allow_download=False)


@pytest.mark.workflow
def test_workflow_stops_before_any_job_on_a_damaged_model_file(tmp_path):
    """Through the Snakefile: one message naming the file and its sizes, nothing scheduled."""
    from workflow import run_snakemake, tiny_config

    weights = tmp_path / "depth-model" / "model.safetensors"
    write_safetensors(weights)
    full = truncate(weights, 0.5)
    config = tiny_config(
        tmp_path,
        labels__tasks={
            "depth": {"labeler": "dpt", "model": {"id": str(weights.parent)}},
        },
    )
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Job stats" not in result.stdout
    assert (
        f"labels.tasks.depth.model: {weights} is {weights.stat().st_size:,} bytes; its format "
        f"says {full:,}. To repair it, copy it again from where the folder"
    ) in result.stderr
