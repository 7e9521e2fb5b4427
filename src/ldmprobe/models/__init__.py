"""Finding and loading models: one path for real weights and for the demo's random weights.

A model reference is ``{"id": <HF repo id or local directory>, "revision": <optional>}``.
``resolve_model`` turns it into a local directory (a directory as given, or a snapshot in the
Hugging Face cache) and every loader calls ``from_pretrained`` on that directory, so the demo
models the workflow saves under ``resources/`` go through exactly the code real weights use.
The package also holds the checks of weight files (``weightfiles``) and the builders of the
demo's tiny random-weight models (``demo_models``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..backbones import DEFAULT_BACKBONE, get_backbone
from ..core.compat import ensure_torchvision_importable
from .weightfiles import Damage, check_weight_file


class MissingModelError(RuntimeError):
    """A configured model is neither a local directory nor in the Hugging Face cache."""


class DamagedModelError(MissingModelError):
    """A configured model is there, but a weight file it loads is incomplete: as unusable as a
    missing model, and found by the same preflight."""


@dataclass(frozen=True)
class ModelRef:
    key: str  # the config key that names this model, for messages
    id: str
    revision: str | None = None
    # Files the loader reads from the folder, each as alternatives (any one will do), for
    # models whose weights are one file in a folder (a checkpoint, an ONNX file); with
    # ``hint``, how to get them. Folders saved with save_pretrained need neither.
    files: tuple[tuple[str, ...], ...] = ()
    hint: str | None = None

    @classmethod
    def from_config(cls, key: str, section: dict) -> ModelRef:
        return cls(key=key, id=str(section["id"]), revision=section.get("revision"))

    def describe(self) -> str:
        return self.id if self.revision is None else f"{self.id}@{self.revision}"


def looks_like_local_path(model_id: str) -> bool:
    # A hub id is "name" or "owner/name"; anything with more slashes can only be a folder.
    return (
        model_id.startswith(("/", "./", "../", "~"))
        or model_id.count("/") > 1
        or os.path.isdir(model_id)
    )


def is_inside(path: str, directory: str) -> bool:
    """Whether ``path`` lies inside ``directory`` (lexically; neither needs to exist).

    Both are made absolute first: a hub id beside an absolute ``models.demo_dir`` is a
    relative path beside an absolute one, which ``commonpath`` refuses to compare.
    """
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return path != directory and os.path.commonpath([path, directory]) == directory


def resolve_model(ref: ModelRef, allow_download: bool = False) -> Path:
    """Local directory holding ``ref``; downloads only when ``allow_download`` is set."""
    path = _locate(ref, allow_download)
    if path is None or missing_files(ref, path):
        raise MissingModelError(missing_model_message([ref]))
    return path


def _locate(ref: ModelRef, allow_download: bool = False) -> Path | None:
    if looks_like_local_path(ref.id):
        path = Path(ref.id).expanduser()
        return path if path.is_dir() else None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id=ref.id, revision=ref.revision, local_files_only=not allow_download
            )
        )
    except LocalEntryNotFoundError:
        return None


def missing_files(ref: ModelRef, path: Path) -> list[str]:
    """The first alternative of each of ``ref.files`` that ``path`` holds none of."""
    return [group[0] for group in ref.files if not any((path / f).is_file() for f in group)]


def find_file(path: Path, alternatives: tuple[str, ...]) -> Path:
    """The first of ``alternatives`` inside ``path`` (resolve_model has checked one exists)."""
    return next(path / f for f in alternatives if (path / f).is_file())


def missing_model_message(refs: list[ModelRef]) -> str:
    lines = ["These models are not available offline:"]
    for ref in refs:
        hint = f" {ref.hint}" if ref.hint else ""
        path = _locate(ref)
        absent = missing_files(ref, path) if path is not None else []
        if path is not None and absent:
            lines.append(
                f"  - {ref.key}: {ref.describe()} (found at {path}) lacks {', '.join(absent)}; "
                f"put {'them' if len(absent) > 1 else 'it'} there, or point config key "
                f"'{ref.key}.id' at a directory that holds {'them' if len(absent) > 1 else 'it'}."
                f"{hint}"
            )
        elif looks_like_local_path(ref.id):
            holding = (
                ", ".join(group[0] for group in ref.files) or "a model saved with save_pretrained"
            )
            lines.append(
                f"  - {ref.key}: local directory {ref.id!r} does not exist; point "
                f"config key '{ref.key}.id' at a directory holding {holding}.{hint}"
            )
        else:
            revision = f" --revision {ref.revision}" if ref.revision else ""
            files = "".join(f" {group[0]}" for group in ref.files)
            lines.append(
                f"  - {ref.key}: {ref.describe()} is not in the Hugging Face cache "
                f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). "
                f"Fetch it on a machine with internet: `hf download {ref.id}{files}{revision}` "
                f"(then copy the cache here), or set '{ref.key}.id' to a local directory, "
                f"or set models.allow_download: true to fetch it when the job runs.{hint}"
            )
    return "\n".join(lines)


# Pipeline components the loaders replace by None (load_diffusion_pipeline), so never read.
UNLOADED_COMPONENTS = ("safety_checker", "feature_extractor")


def loaded_weight_files(ref: ModelRef, path: Path) -> list[Path]:
    """The weight files loading ``ref`` from ``path`` reads: the files its labeler names
    (ONNX, checkpoints), and the safetensors files of the folder or, for a diffusers pipeline,
    of its components. Every safetensors file there counts, variants included: a damaged one
    beside the loaded one is worth knowing about too."""
    files = [find_file(path, group) for group in ref.files]
    folders = [path]
    index = path / "model_index.json"
    if index.is_file():
        components = json.loads(index.read_text())
        folders = [
            path / name
            for name, spec in sorted(components.items())
            if not name.startswith("_")
            and name not in UNLOADED_COMPONENTS
            and isinstance(spec, list)
            and (path / name).is_dir()
        ]
    for folder in folders:
        files += sorted(folder.glob("*.safetensors"))
    return files


def damaged_model_message(damaged: list[tuple[ModelRef, Path, Damage]]) -> str:
    lines = ["These model files are incomplete (a partial download or an interrupted copy):"]
    for ref, path, damage in damaged:
        hint = f" {ref.hint}" if ref.hint else ""
        if looks_like_local_path(ref.id):
            fetch = (
                f"copy it again from where the folder '{ref.id}' came from (or save the model "
                "there again)"
            )
        else:
            revision = f" --revision {ref.revision}" if ref.revision else ""
            inside = damage.path.relative_to(path).as_posix()
            fetch = (
                f"fetch it again on a machine with internet: `hf download {ref.id} {inside}"
                f"{revision} --force-download` (then copy the cache here)"
            )
        lines.append(f"  - {ref.key}: {damage.path} {damage.sizes()}. To repair it, {fetch}.{hint}")
    return "\n".join(lines)


def preflight(refs: list[ModelRef], allow_download: bool) -> None:
    """Fail once, before any job is scheduled, listing every model that is missing (unless it
    may be downloaded) and every weight file of a model that is there but incomplete."""
    missing, damaged = [], []
    for ref in refs:
        path = _locate(ref)
        if path is None or missing_files(ref, path):
            missing.append(ref)
            continue
        for file in loaded_weight_files(ref, path):
            damage = check_weight_file(file)
            if damage is not None:
                damaged.append((ref, path, damage))
    parts = [missing_model_message(missing)] if missing and not allow_download else []
    if damaged:
        parts.append(damaged_model_message(damaged))
    if parts:
        error = DamagedModelError if damaged else MissingModelError
        raise error("\n".join(parts))


def torch_dtype(name: str, device: str):
    import torch

    # Half precision on the CPU is slow and partly unsupported; the study's fp16 is a GPU setting.
    if device == "cpu":
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> str:
    """A config's device setting: ``auto`` is CUDA when available, else the CPU."""
    return default_device() if device == "auto" else device


def load_diffusion_pipeline(
    ref: ModelRef,
    scheduler: str,
    dtype: str,
    device: str,
    allow_download: bool = False,
    backbone: str = DEFAULT_BACKBONE,
):
    """The pipeline of ``ref``, loaded by its backbone adapter, with the configured sampler."""
    path = resolve_model(ref, allow_download)
    pipe = get_backbone(backbone).load_pipeline(path, torch_dtype(dtype, device))
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_depth2img_pipeline(
    ref: ModelRef, dtype: str, device: str, allow_download: bool = False, scheduler=None
):
    """Stable Diffusion 2 depth (``StableDiffusionDepth2ImgPipeline``) from ``ref``'s folder,
    with its own sampler unless ``scheduler`` names one of SCHEDULERS."""
    ensure_torchvision_importable()
    from diffusers import StableDiffusionDepth2ImgPipeline

    path = resolve_model(ref, allow_download)
    pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(
        path, dtype=torch_dtype(dtype, device), use_safetensors=True
    )
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


SCHEDULERS = {
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}


def make_scheduler(name: str, base_config):
    ensure_torchvision_importable()
    import diffusers

    scheduler_class = getattr(diffusers, SCHEDULERS[name])
    overrides = {"skip_prk_steps": True} if name == "pndm" else {}
    return scheduler_class.from_config(base_config, **overrides)


def load_denoiser_on_meta(
    ref: ModelRef, allow_download: bool = False, backbone: str = DEFAULT_BACKBONE
):
    """The denoiser's module structure without its weights (cheap), for layer discovery."""
    return get_backbone(backbone).load_denoiser_on_meta(resolve_model(ref, allow_download))


def load_scheduler_config(ref: ModelRef, allow_download: bool = False):
    ensure_torchvision_importable()
    from diffusers import DDPMScheduler

    return DDPMScheduler.load_config(resolve_model(ref, allow_download), subfolder="scheduler")


def vae_scale_factor(ref: ModelRef, allow_download: bool = False) -> int:
    """Pixels per latent cell, as StableDiffusionPipeline computes it from the VAE's config
    (8 for SD; 4 for the known-answer world's VAE)."""
    import json

    config = json.loads((resolve_model(ref, allow_download) / "vae" / "config.json").read_text())
    return 2 ** (len(config["block_out_channels"]) - 1)
