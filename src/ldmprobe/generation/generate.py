"""One generation job: image, per-step previews, latents and self-attention activations.

"Step" is the index of the U-Net call, not of the scheduler's timestep list entry, so
schedulers that repeat a timestep (PNDM) cannot shift it; the timestep of each call is
recorded beside it.
"""

from __future__ import annotations

import copy
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backbones import backbone_of
from ..backbones.layers import Layer, discover_layers, select_layers
from ..backbones.trace import Point, Trace
from ..core.io import atomic_directory, atomic_file, write_json
from ..core.provenance import VERSION_KEY, package_version, png_info
from .reads import Selection
from .sources import DENOISER, GUIDED, PERMUTED, VAE
from .storage import ActivationWriter, array_path, create_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    height: int = 512
    width: int = 512
    steps: int = 15
    guidance_scale: float = 7.5
    halves: tuple[str, ...] = ("cond",)
    preview_kinds: tuple[str, ...] = ("x0",)
    codec: dict = field(default_factory=lambda: {"name": "blosc-zstd", "level": 3})
    activation_dtype: str = "float16"
    # Activation chunks queued for the writer thread; 0 writes them synchronously.
    write_queue: int = 64
    # Controls (``sources.py``): layer patterns of the permuted U-Net and its permutation
    # seed (None: off), and which latent the VAE control decodes (None: off).
    permuted_layers: tuple[str, ...] | None = None
    permutation_seed: int = 0
    vae_latent: str | None = None
    # Where x_T comes from: None for Gaussian noise from the seed; the known-answer world's
    # route (b) gives {"kind": "world-inversion", "data_seed": n} (``world/inversion.py``).
    start: dict | None = None
    # What is written (``reads.store_plan`` as plain dicts): per source role (``sources.py``),
    # its layers and steps. None: every layer at every step.
    store: dict | None = None


def stored_cells(
    settings: GenerationSettings, role: str, layers: list, n_calls: int
) -> tuple[list, list[int]]:
    """Which of a source's ``layers`` generation traces, and at which steps the writer keeps
    them (``ActivationWriter`` drops the others): the one place ``generation.store`` acts."""
    if settings.store is None:
        return layers, list(range(n_calls))
    if role not in settings.store:
        return [], []
    selection = Selection.from_dict(settings.store[role])
    names = set(selection.resolve_layers(layers))
    return [layer for layer in layers if layer.name in names], selection.resolve_steps(n_calls)


def initial_noise(seed: int, latent_shape: tuple[int, int, int]):
    """The reference recipe: ``torch.manual_seed(seed)``, then a CPU normal draw of the latent
    (channels, height, width; the backbone's ``latent_shape``).

    The pipeline scales it by the scheduler's initial sigma.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *latent_shape), generator=generator)


def start_latents(pipe, prompt: str, seed: int, settings: GenerationSettings, latent_shape):
    """x_T: Gaussian noise from the seed, or the start that ``settings.start`` names."""
    if settings.start is None:
        return initial_noise(seed, latent_shape)
    from .inversion import inverted_start

    return inverted_start(pipe, prompt, seed, settings.start, settings.height, settings.steps)


def store_tokens(writer, source: str):
    """A trace's ``record`` that hands each row to ``writer`` under ``source``, as float16."""

    def record(layer: str, half: str, step: int, tokens) -> None:
        values = tokens.to("cpu", dtype=torch.float16).numpy()
        writer.put(array_path(source, half, layer), step, values)

    return record


class DenoiserCalls:
    """A trace's ``on_call``: every denoiser call's timestep, inputs (for replaying it), the
    noisy latent x_t of the guided trajectory and its x0 prediction; logs each call."""

    def __init__(self, backbone, scheduler, guidance_scale: float, latent_shape, n_calls: int):
        self.backbone = backbone
        self.scheduler = scheduler
        self.guidance_scale = guidance_scale
        self.latent_shape = latent_shape
        self.n_calls = n_calls
        self.timesteps: list[float] = []
        self.inputs: list[dict] = []
        self.xt: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []

    def __call__(self, step, args, kwargs, output) -> None:
        backbone = self.backbone
        timestep = backbone.call_timestep(args, kwargs)
        self.timesteps.append(
            float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else timestep
        )
        log.info("step %d/%d (timestep %.2f)", step + 1, self.n_calls, self.timesteps[-1])
        self.inputs.append(backbone.replay_inputs(args, kwargs))
        sample = backbone.call_sample(args, kwargs).float()
        prediction = backbone.call_prediction(output).float()
        cond = backbone.cfg_layout(sample.shape[0])["cond"]
        prediction = backbone.unpack_latents(
            backbone.guided(prediction, self.guidance_scale), self.latent_shape
        )
        sample = backbone.unpack_latents(sample[cond : cond + 1], self.latent_shape)
        x0 = backbone.predict_x0(self.scheduler, sample, prediction, self.timesteps[-1])
        self.xt.append(sample[0].cpu().numpy())
        self.x0.append(x0[0].cpu().numpy())


def permute_weights(module, seed: int) -> int:
    """Permute the elements of every ``*weight`` parameter in place; biases are kept.

    One generator seeded once walks the parameters in ``named_parameters`` order, so the
    permutation depends only on the seed and the architecture. Returns the number of tensors.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    count = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith("weight"):
                continue
            order = torch.randperm(param.numel(), generator=generator).to(param.device)
            param.copy_(param.flatten()[order].view_as(param))
            count += 1
    return count


def permuted_denoiser(denoiser, seed: int):
    """The permuted control's network: a copy of ``denoiser`` with every weight tensor's
    elements permuted (``permute_weights``); the pipeline's own denoiser is untouched,
    so one job can generate many images."""
    permuted = copy.deepcopy(denoiser)
    count = permute_weights(permuted, seed)
    log.info("permuted %d weight tensors of a denoiser copy (seed %d)", count, seed)
    return permuted


def replay_permuted(backbone, permuted, inputs: list[dict], layers: list[Layer], halves, writer):
    """Rerun every recorded denoiser call through ``permuted``: it sees exactly the inputs the
    real one saw, so its activations belong to the same images and labels."""
    log.info("replaying %d calls through the permuted denoiser", len(inputs))
    points = [backbone.point(layer.name, layer.module_path) for layer in layers]
    record = store_tokens(writer, PERMUTED.name(backbone.kind))
    with (
        Trace(permuted, points, halves=halves, layout=backbone.cfg_layout, record=record),
        torch.no_grad(),
    ):
        for call in inputs:
            backbone.replay(permuted, call)


def vae_trace(backbone, vae, writer) -> Trace:
    """Records the VAE control: its decoder's attention at each decoded latent (one decoder
    call per step), from the guided trajectory."""
    return Trace(
        vae.decoder,
        [Point(VAE.layer["name"], backbone.vae_module)],
        halves=(GUIDED,),
        layout=lambda _batch: {GUIDED: 0},
        record=store_tokens(writer, VAE.name(backbone.kind)),
    )


def count_unet_calls(scheduler, steps: int) -> tuple[int, list[float]]:
    # Flux's scheduler shifts its sigmas by the image size (mu); the count does not depend on it.
    shift = {"mu": 0.0} if getattr(scheduler.config, "use_dynamic_shifting", False) else {}
    scheduler.set_timesteps(steps, **shift)
    timesteps = [float(t) for t in scheduler.timesteps]
    return len(timesteps), timesteps


def decode_latents(backbone, pipe, latents: np.ndarray):
    """PIL images of latents [n, channels, h, w], decoded one by one to bound memory."""
    images = []
    vae = pipe.vae
    for latent in latents:
        tensor = torch.from_numpy(latent[None]).to(vae.device, vae.dtype)
        with torch.no_grad():
            decoded = backbone.decode(vae, tensor)
        images.extend(pipe.image_processor.postprocess(decoded.float(), output_type="pil"))
    return images


def generate(
    pipe,
    prompt: str,
    seed: int,
    settings: GenerationSettings,
    image_path: Path,
    previews_dir: Path,
    store_path: Path,
    meta_path: Path,
    provenance: dict,
    permuted: torch.nn.Module | None = None,
) -> dict:
    """One image, its previews, activation store and metadata.

    ``permuted``: the permuted control's network (``permuted_denoiser``), made once per job;
    made here when the settings ask for the control and none is given.
    """
    backbone = backbone_of(pipe)
    denoiser = backbone.denoiser(pipe)
    latent_shape = backbone.latent_shape(
        denoiser, settings.height, settings.width, pipe.vae_scale_factor
    )
    _channels, latent_h, latent_w = latent_shape
    layers = discover_layers(backbone, denoiser, latent_h, latent_w)
    n_calls, _ = count_unet_calls(pipe.scheduler, settings.steps)
    held = backbone.batch_halves(settings.guidance_scale)
    if "uncond" in settings.halves and "uncond" not in held:
        reason = backbone.no_uncond_reason(settings.guidance_scale)
        raise ValueError(f"generation.cfg_half includes 'uncond', but {reason}")
    traced, traced_steps = stored_cells(settings, DENOISER.role, layers, n_calls)
    arrays = {
        array_path(DENOISER.name(backbone.kind), half, layer.name): (
            (n_calls, layer.height * layer.width, layer.channels),
            settings.activation_dtype,
        )
        for half in settings.halves
        for layer in traced
    }
    steps_of = dict.fromkeys(arrays, traced_steps)
    permuted_layers = []
    if settings.permuted_layers is not None:
        permuted_layers, permuted_steps = stored_cells(
            settings,
            PERMUTED.role,
            select_layers(layers, list(settings.permuted_layers)),
            n_calls,
        )
        permuted_arrays = {
            array_path(PERMUTED.name(backbone.kind), half, layer.name): (
                (n_calls, layer.height * layer.width, layer.channels),
                settings.activation_dtype,
            )
            for half in settings.halves
            for layer in permuted_layers
        }
        arrays.update(permuted_arrays)
        steps_of.update(dict.fromkeys(permuted_arrays, permuted_steps))
    control_layers = {}
    if settings.vae_latent is not None:
        channels = backbone.vae_channels(pipe.vae)
        control_layers[VAE.name(backbone.kind)] = [
            {
                "name": VAE.layer["name"],
                "height": latent_h,
                "width": latent_w,
                "channels": channels,
            }
        ]
        vae_path = array_path(VAE.name(backbone.kind), GUIDED, VAE.layer["name"])
        arrays[vae_path] = ((n_calls, latent_h * latent_w, channels), settings.activation_dtype)
        steps_of[vae_path] = stored_cells(settings, VAE.role, [], n_calls)[1]
    arrays["latents/xt"] = ((n_calls, *latent_shape), "float32")
    arrays["latents/x0"] = ((n_calls, *latent_shape), "float32")

    prompt_info = backbone.prompt_length(pipe, prompt)
    noise = start_latents(pipe, prompt, seed, settings, latent_shape)
    log.info("generating seed %d, %d U-Net calls, %d layers", seed, n_calls, len(layers))

    with atomic_directory(store_path) as tmp_store:
        group = create_store(tmp_store, arrays, settings.codec, steps_of)
        writer = ActivationWriter(group, settings.write_queue, steps_of)
        try:
            calls = DenoiserCalls(
                backbone, pipe.scheduler, settings.guidance_scale, latent_shape, n_calls
            )
            points = [backbone.point(layer.name, layer.module_path) for layer in traced]
            with (
                Trace(
                    denoiser,
                    points if settings.halves else [],
                    halves=settings.halves,
                    layout=backbone.cfg_layout,
                    record=store_tokens(writer, DENOISER.name(backbone.kind)),
                    on_call=calls,
                ) as trace,
                torch.no_grad(),
            ):
                result = pipe(
                    prompt,
                    height=settings.height,
                    width=settings.width,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    latents=backbone.pack_latents(noise).to(pipe.device, denoiser.dtype),
                    **backbone.pipeline_kwargs,
                )
            if trace.calls != n_calls:
                raise RuntimeError(f"expected {n_calls} U-Net calls, recorded {trace.calls}")
            if permuted_layers:
                if permuted is None:
                    permuted = permuted_denoiser(denoiser, settings.permutation_seed)
                replay_permuted(
                    backbone, permuted, calls.inputs, permuted_layers, settings.halves, writer
                )
            latents = {"x0": np.stack(calls.x0), "xt": np.stack(calls.xt)}
            with atomic_directory(previews_dir) as tmp_previews:
                for kind in settings.preview_kinds:
                    (tmp_previews / kind).mkdir()
                    if kind == settings.vae_latent:
                        with vae_trace(backbone, pipe.vae, writer):
                            images = decode_latents(backbone, pipe, latents[kind])
                    else:
                        images = decode_latents(backbone, pipe, latents[kind])
                    for step, image in enumerate(images):
                        image.save(tmp_previews / kind / f"step{step:03d}.png", pnginfo=png_info())
                log.info("decoded %d previews per kind %s", n_calls, list(settings.preview_kinds))
                if settings.vae_latent and settings.vae_latent not in settings.preview_kinds:
                    with vae_trace(backbone, pipe.vae, writer):
                        decode_latents(backbone, pipe, latents[settings.vae_latent])
        finally:
            writer.close()
        group["latents/xt"][:] = latents["xt"]
        group["latents/x0"][:] = latents["x0"]
        group.attrs.update(
            {
                VERSION_KEY: package_version(),
                "steps": n_calls,
                "layers": [layer.to_dict() for layer in layers],
                "controls": {
                    **control_layers,
                    **(
                        {
                            PERMUTED.name(backbone.kind): [
                                layer.to_dict() for layer in permuted_layers
                            ]
                        }
                        if permuted_layers
                        else {}
                    ),
                },
            }
        )

    with atomic_file(image_path) as tmp_image:
        result.images[0].save(tmp_image, format="PNG", pnginfo=png_info())

    meta = {
        **provenance,
        "prompt": prompt,
        "seed": seed,
        **prompt_info,
        "height": settings.height,
        "width": settings.width,
        "num_inference_steps": settings.steps,
        "unet_calls": n_calls,
        "timesteps": calls.timesteps,
        "guidance_scale": settings.guidance_scale,
        "cfg_halves": list(settings.halves),
        "activation_dtype": settings.activation_dtype,
        "compute_dtype": str(denoiser.dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": dict(pipe.scheduler.config),
        "codec": settings.codec,
        "layers": [layer.to_dict() for layer in layers],
        "preview_kinds": list(settings.preview_kinds),
        "controls": {
            "permuted_unet": (
                {"seed": settings.permutation_seed, "layers": [x.name for x in permuted_layers]}
                if permuted_layers
                else None
            ),
            "vae_latent": settings.vae_latent,
        },
        "versions": package_versions(),
    }
    if settings.start is not None:
        # Where x_T came from (route (b)): the labels of a `world` labeler with scene: render
        # are read from here. Absent for Gaussian noise, as before.
        meta["start"] = dict(settings.start)
    write_json(meta_path, meta)
    return meta


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("ldmprobe", "torch", "diffusers", "transformers", "zarr", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
