"""One generation job: image, per-step previews, latents and self-attention activations.

"Step" is the index of the U-Net call, not of the scheduler's timestep list entry, so
schedulers that repeat a timestep (PNDM) cannot shift it; the timestep of each call is
recorded beside it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import controls
from .io import atomic_directory, atomic_file, write_json
from .layers import Layer, discover_layers, find_attn1_modules, select_layers
from .provenance import VERSION_KEY, package_version, png_info
from .reads import Selection
from .storage import HALVES, ActivationWriter, array_path, create_store

log = logging.getLogger(__name__)

UNET_SOURCE = "unet"


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
    # Controls (``controls.py``): layer patterns of the permuted U-Net and its permutation
    # seed (None: off), and which latent the VAE control decodes (None: off).
    permuted_layers: tuple[str, ...] | None = None
    permutation_seed: int = 0
    vae_latent: str | None = None
    # What is written (``reads.store_plan`` as plain dicts): per source, its layers and steps.
    # None: every layer at every step.
    store: dict | None = None


def stored_cells(
    settings: GenerationSettings, source: str, layers: list, n_calls: int
) -> tuple[list, list[int]]:
    """Which of a source's ``layers`` generation writes, and at which steps."""
    if settings.store is None:
        return layers, list(range(n_calls))
    if source not in settings.store:
        return [], []
    selection = Selection.from_dict(settings.store[source])
    names = set(selection.resolve_layers(layers))
    return [layer for layer in layers if layer.name in names], selection.resolve_steps(n_calls)


def initial_noise(seed: int, height: int, width: int, channels: int = 4):
    """The reference recipe: ``torch.manual_seed(seed)``, then a CPU normal draw.

    The pipeline scales it by the scheduler's initial sigma.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height // 8, width // 8), generator=generator)


def alpha_bar(scheduler, timestep) -> float:
    """Signal fraction of the U-Net input at this call, whatever space the scheduler steps in."""
    if float(scheduler.init_noise_sigma) > 1.0:
        # Sigma-space schedulers (LMS, Euler): the U-Net sees x / sqrt(sigma^2 + 1).
        sigma = float(scheduler.sigmas[scheduler.step_index])
        return 1.0 / (1.0 + sigma**2)
    return float(scheduler.alphas_cumprod[int(round(float(timestep)))])


def predict_x0(sample, model_output, abar: float, prediction_type: str):
    if prediction_type == "epsilon":
        return (sample - (1 - abar) ** 0.5 * model_output) / abar**0.5
    if prediction_type == "v_prediction":
        return abar**0.5 * sample - (1 - abar) ** 0.5 * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


class LayerCapture:
    """Forward hooks that write each U-Net call's self-attention outputs under ``source``.

    The step is the index of the U-Net call, counted by a pre-hook on the U-Net itself.
    """

    def __init__(self, unet, layers: list[Layer], halves, writer, source: str = UNET_SOURCE):
        self.unet = unet
        self.layers = layers
        self.halves = halves
        self.writer = writer
        self.source = source
        self.step = -1
        self._handles = []

    def __enter__(self):
        self._handles.append(self.unet.register_forward_pre_hook(self._count))
        modules = find_attn1_modules(self.unet)
        for layer in self.layers:
            hook = (
                modules[layer.module_path]
                .to_out[0]
                .register_forward_hook(
                    lambda _m, _i, output, layer=layer: self._capture(layer, output)
                )
            )
            self._handles.append(hook)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def _count(self, _module, _args):
        self.step += 1

    def _capture(self, layer: Layer, output) -> None:
        batch = output.shape[0]
        for half in self.halves:
            # The CFG batch is [uncond, cond]; without CFG the only row is the conditional one.
            row = HALVES[half] if batch == 2 else 0
            values = output[row].detach().to("cpu", dtype=torch.float16).numpy()
            self.writer.put(array_path(self.source, half, layer.name), self.step, values)


class StepRecorder:
    """Hooks on the U-Net that record every call: timestep, inputs, latents, x0, activations."""

    def __init__(self, pipe, layers: list[Layer], halves, writer, guidance_scale: float):
        self.pipe = pipe
        self.capture = LayerCapture(pipe.unet, layers, halves, writer)
        self.guidance_scale = guidance_scale
        self.step = -1
        self.timesteps: list[float] = []
        # (sample, timestep, text embeddings) of every call, for replaying them (controls).
        self.inputs: list[tuple] = []
        self.xt: list[np.ndarray] = []
        self.x0: list[np.ndarray] = []
        self._handles = []

    def __enter__(self):
        unet = self.pipe.unet
        self._handles.append(unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        self._handles.append(unet.register_forward_hook(self._after_unet, with_kwargs=True))
        self.capture.__enter__()
        return self

    def __exit__(self, *exc):
        self.capture.__exit__(*exc)
        for handle in self._handles:
            handle.remove()

    def _before_unet(self, _module, args, kwargs):
        self.step += 1
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.timesteps.append(
            float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else timestep
        )
        sample = args[0] if args else kwargs["sample"]
        embeddings = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        self.inputs.append((sample.detach(), timestep, embeddings.detach()))

    def _after_unet(self, _module, args, kwargs, output):
        sample = (args[0] if args else kwargs["sample"]).float()
        prediction = (output[0] if isinstance(output, tuple) else output.sample).float()
        if prediction.shape[0] == 2:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + self.guidance_scale * (cond - uncond)
            sample = sample[1:]
        scheduler = self.pipe.scheduler
        abar = alpha_bar(scheduler, self.timesteps[-1])
        x0 = predict_x0(sample, prediction, abar, scheduler.config.prediction_type)
        self.xt.append(sample[0].cpu().numpy())
        self.x0.append(x0[0].cpu().numpy())


def permuted_unet(unet, seed: int):
    """The permuted-U-Net control's network: a copy of ``unet`` with every weight tensor's
    elements permuted (``controls.permute_weights``); the pipeline's own U-Net is untouched, so
    one job can generate many images."""
    permuted = copy.deepcopy(unet)
    count = controls.permute_weights(permuted, seed)
    log.info("permuted %d weight tensors of a U-Net copy (seed %d)", count, seed)
    return permuted


def replay_permuted(unet, inputs: list[tuple], layers: list[Layer], halves, writer):
    """Rerun every recorded U-Net call through the permuted ``unet``: it sees exactly the inputs
    the real one saw, so its activations belong to the same images and labels."""
    log.info("replaying %d calls through the permuted U-Net", len(inputs))
    with LayerCapture(unet, layers, halves, writer, controls.PERMUTED), torch.no_grad():
        for sample, timestep, embeddings in inputs:
            unet(sample, timestep, encoder_hidden_states=embeddings, return_dict=False)


class VaeCapture:
    """Writes the VAE decoder's mid-block self-attention output of each decoded step."""

    def __init__(self, vae, writer):
        self.module = controls.vae_attention(vae)
        self.writer = writer
        self.step = 0
        self._handle = None

    def __enter__(self):
        self._handle = self.module.register_forward_hook(self._capture)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _capture(self, _module, _inputs, output):
        values = output[0].detach().to("cpu", dtype=torch.float16).numpy()
        path = array_path(controls.VAE, controls.GUIDED, controls.VAE_LAYER)
        self.writer.put(path, self.step, values)


def count_unet_calls(scheduler, steps: int) -> tuple[int, list[float]]:
    scheduler.set_timesteps(steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    return len(timesteps), timesteps


def decode_latents(pipe, latents: np.ndarray, capture: VaeCapture | None = None):
    """PIL images of latents [n, 4, h, w], decoded one by one to bound memory.

    With ``capture``, its step follows the latent's index.
    """
    images = []
    vae = pipe.vae
    for step, latent in enumerate(latents):
        if capture is not None:
            capture.step = step
        tensor = torch.from_numpy(latent[None]).to(vae.device, vae.dtype)
        with torch.no_grad():
            decoded = vae.decode(tensor / vae.config.scaling_factor).sample
        images.extend(pipe.image_processor.postprocess(decoded.float(), output_type="pil"))
    return images


def check_prompt_length(pipe, prompt: str) -> dict:
    tokenizer = pipe.tokenizer
    ids = tokenizer(prompt, truncation=False).input_ids
    limit = tokenizer.model_max_length
    truncated = len(ids) > limit
    if truncated:
        log.warning(
            "prompt is %d tokens; the text encoder sees only the first %d (truncated)",
            len(ids),
            limit,
        )
    return {"prompt_tokens": len(ids), "prompt_truncated": truncated}


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

    ``permuted``: the permuted-U-Net control's network (``permuted_unet``), made once per job;
    made here when the settings ask for the control and none is given.
    """
    latent_h, latent_w = settings.height // 8, settings.width // 8
    layers = discover_layers(pipe.unet, latent_h, latent_w)
    n_calls, _ = count_unet_calls(pipe.scheduler, settings.steps)
    cfg = settings.guidance_scale > 1.0
    if not cfg and "uncond" in settings.halves:
        raise ValueError("generation.cfg_half includes 'uncond' but guidance_scale <= 1 (no CFG)")
    unet_layers, unet_steps = stored_cells(settings, UNET_SOURCE, layers, n_calls)
    arrays = {
        array_path(UNET_SOURCE, half, layer.name): (
            (n_calls, layer.height * layer.width, layer.channels),
            settings.activation_dtype,
        )
        for half in settings.halves
        for layer in unet_layers
    }
    steps_of = dict.fromkeys(arrays, unet_steps)
    permuted_layers = []
    if settings.permuted_layers is not None:
        permuted_layers = select_layers(layers, list(settings.permuted_layers))
        permuted_layers, permuted_steps = stored_cells(
            settings, controls.PERMUTED, permuted_layers, n_calls
        )
        steps_of.update(
            {
                array_path(controls.PERMUTED, half, layer.name): permuted_steps
                for half in settings.halves
                for layer in permuted_layers
            }
        )
        arrays.update(
            {
                array_path(controls.PERMUTED, half, layer.name): (
                    (n_calls, layer.height * layer.width, layer.channels),
                    settings.activation_dtype,
                )
                for half in settings.halves
                for layer in permuted_layers
            }
        )
    control_layers = {}
    if settings.vae_latent is not None:
        # The decoder's mid block runs on the latent grid, with the decoder's widest channels.
        channels = pipe.vae.config.block_out_channels[-1]
        control_layers[controls.VAE] = [
            {
                "name": controls.VAE_LAYER,
                "height": latent_h,
                "width": latent_w,
                "channels": channels,
            }
        ]
        vae_path = array_path(controls.VAE, controls.GUIDED, controls.VAE_LAYER)
        arrays[vae_path] = ((n_calls, latent_h * latent_w, channels), settings.activation_dtype)
        steps_of[vae_path] = stored_cells(settings, controls.VAE, [], n_calls)[1]
    arrays["latents/xt"] = ((n_calls, 4, latent_h, latent_w), "float32")
    arrays["latents/x0"] = ((n_calls, 4, latent_h, latent_w), "float32")

    prompt_info = check_prompt_length(pipe, prompt)
    noise = initial_noise(seed, settings.height, settings.width)
    log.info("generating seed %d, %d U-Net calls, %d layers", seed, n_calls, len(layers))

    with atomic_directory(store_path) as tmp_store:
        group = create_store(tmp_store, arrays, settings.codec, steps_of)
        writer = ActivationWriter(group, settings.write_queue, steps_of)
        try:
            with StepRecorder(
                pipe, unet_layers, settings.halves, writer, settings.guidance_scale
            ) as rec:

                def report_progress(_pipe, step_index, timestep, callback_kwargs):
                    log.info("step %d/%d (timestep %.2f)", step_index + 1, n_calls, float(timestep))
                    return callback_kwargs

                with torch.no_grad():
                    result = pipe(
                        prompt,
                        height=settings.height,
                        width=settings.width,
                        num_inference_steps=settings.steps,
                        guidance_scale=settings.guidance_scale,
                        latents=noise.to(pipe.device, pipe.unet.dtype),
                        callback_on_step_end=report_progress,
                    )
            if rec.step + 1 != n_calls:
                raise RuntimeError(f"expected {n_calls} U-Net calls, recorded {rec.step + 1}")
            if permuted_layers:
                if permuted is None:
                    permuted = permuted_unet(pipe.unet, settings.permutation_seed)
                replay_permuted(permuted, rec.inputs, permuted_layers, settings.halves, writer)
            latents = {"x0": np.stack(rec.x0), "xt": np.stack(rec.xt)}
            vae_capture = VaeCapture(pipe.vae, writer) if settings.vae_latent else None
            with atomic_directory(previews_dir) as tmp_previews:
                for kind in settings.preview_kinds:
                    (tmp_previews / kind).mkdir()
                    capture = vae_capture if kind == settings.vae_latent else None
                    with capture or contextlib.nullcontext():
                        images = decode_latents(pipe, latents[kind], capture)
                    for step, image in enumerate(images):
                        image.save(tmp_previews / kind / f"step{step:03d}.png", pnginfo=png_info())
                log.info("decoded %d previews per kind %s", n_calls, list(settings.preview_kinds))
                if vae_capture and settings.vae_latent not in settings.preview_kinds:
                    with vae_capture:
                        decode_latents(pipe, latents[settings.vae_latent], vae_capture)
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
                        {controls.PERMUTED: [layer.to_dict() for layer in permuted_layers]}
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
        "timesteps": rec.timesteps,
        "guidance_scale": settings.guidance_scale,
        "cfg_halves": list(settings.halves),
        "activation_dtype": settings.activation_dtype,
        "compute_dtype": str(pipe.unet.dtype).removeprefix("torch."),
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
