"""Finding and loading models: one path for real weights and for the demo's random weights.

A model reference is ``{"id": <HF repo id or local directory>, "revision": <optional>}``.
``resolve_model`` turns it into a local directory (a directory as given, or a snapshot in the
Hugging Face cache) and every loader calls ``from_pretrained`` on that directory, so the demo
models the workflow saves under ``resources/`` go through exactly the code real weights use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .compat import ensure_torchvision_importable


class MissingModelError(RuntimeError):
    """A configured model is neither a local directory nor in the Hugging Face cache."""


@dataclass(frozen=True)
class ModelRef:
    key: str  # the config key that names this model, for messages
    id: str
    revision: str | None = None

    @classmethod
    def from_config(cls, key: str, section: dict) -> ModelRef:
        return cls(key=key, id=str(section["id"]), revision=section.get("revision"))

    def describe(self) -> str:
        return self.id if self.revision is None else f"{self.id}@{self.revision}"


def looks_like_local_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or os.path.isdir(model_id)


def is_inside(path: str, directory: str) -> bool:
    """Whether ``path`` lies inside ``directory`` (lexically; neither needs to exist)."""
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path != directory and os.path.commonpath([path, directory]) == directory


def resolve_model(ref: ModelRef, allow_download: bool = False) -> Path:
    """Local directory holding ``ref``; downloads only when ``allow_download`` is set."""
    if looks_like_local_path(ref.id):
        path = Path(ref.id).expanduser()
        if not path.is_dir():
            raise MissingModelError(missing_model_message([ref]))
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id=ref.id, revision=ref.revision, local_files_only=not allow_download
            )
        )
    except LocalEntryNotFoundError as error:
        raise MissingModelError(missing_model_message([ref])) from error


def missing_model_message(refs: list[ModelRef]) -> str:
    lines = ["These models are not available offline:"]
    for ref in refs:
        if looks_like_local_path(ref.id):
            lines.append(
                f"  - {ref.key}: local directory {ref.id!r} does not exist; point "
                f"config key '{ref.key}.id' at a directory saved with save_pretrained."
            )
        else:
            revision = f" --revision {ref.revision}" if ref.revision else ""
            lines.append(
                f"  - {ref.key}: {ref.describe()} is not in the Hugging Face cache "
                f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). "
                f"Fetch it on a machine with internet: `hf download {ref.id}{revision}` "
                f"(then copy the cache here), or set '{ref.key}.id' to a local directory, "
                "or set models.allow_download: true to fetch it when the job runs."
            )
    return "\n".join(lines)


def preflight(refs: list[ModelRef], allow_download: bool) -> None:
    """Fail once, listing every missing model, before any job is scheduled."""
    if allow_download:
        return
    missing = []
    for ref in refs:
        try:
            resolve_model(ref)
        except MissingModelError:
            missing.append(ref)
    if missing:
        raise MissingModelError(missing_model_message(missing))


def torch_dtype(name: str, device: str):
    import torch

    # Half precision on the CPU is slow and partly unsupported; the study's fp16 is a GPU setting.
    if device == "cpu":
        return torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_diffusion_pipeline(
    ref: ModelRef, scheduler: str, dtype: str, device: str, allow_download: bool = False
):
    ensure_torchvision_importable()
    from diffusers import StableDiffusionPipeline

    path = resolve_model(ref, allow_download)
    pipe = StableDiffusionPipeline.from_pretrained(
        path,
        dtype=torch_dtype(dtype, device),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        use_safetensors=True,
    )
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


SCHEDULERS = {
    "lms": "LMSDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
}


def make_scheduler(name: str, base_config):
    import diffusers

    scheduler_class = getattr(diffusers, SCHEDULERS[name])
    overrides = {"skip_prk_steps": True} if name == "pndm" else {}
    return scheduler_class.from_config(base_config, **overrides)


def load_unet_on_meta(ref: ModelRef, allow_download: bool = False):
    """The U-Net's module structure without its weights (cheap), for layer discovery."""
    import torch
    from diffusers import UNet2DConditionModel

    path = resolve_model(ref, allow_download)
    config = UNet2DConditionModel.load_config(path, subfolder="unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def load_scheduler_config(ref: ModelRef, allow_download: bool = False):
    from diffusers import DDPMScheduler

    return DDPMScheduler.load_config(resolve_model(ref, allow_download), subfolder="scheduler")
