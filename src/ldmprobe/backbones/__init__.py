"""Backbone adapters: one small class per model family, registered by name.

Everything the workflow knows about a family of diffusion models lives in its adapter; the rest
of the package asks the adapter, never the model class. The family of a study is config key
``models.diffusion.backbone`` (default ``stable-diffusion``); ``backbone_of(pipe)`` finds the
adapter of a loaded pipeline by its class (not of a bare denoiser: SD and SDXL share one).

An adapter provides (``Backbone`` documents each member):

* loading: ``pipeline_classes`` (diffusers class names), ``load_pipeline(path, dtype)`` and
  ``load_denoiser_on_meta(path)`` (structure only, for layer discovery);
* the denoiser: ``denoiser(pipe)``, and ``kind`` (``"unet"``, ``"transformer"``), the word
  used for its source in paths and tables (``ldmprobe.generation.sources``), ``kind_label`` in
  figures;
* latents: ``latent_shape(denoiser, height, width, factor)`` (channels and grid; ``factor``,
  the model's VAE downsampling, defaults to the family's ``latent_factor``);
* the probed layers: ``short_name(module_path)`` (short, sortable, path-safe name and block of a
  probed module; None for any other module), from which ``probed_modules(denoiser)`` ({module
  path: (short name, block)}) follows; ``point(name, module_path)``, the ``trace.Point`` that
  reads the image-token self-attention output of that module (a joint-attention family reads
  its image stream in ``Point.read`` and puts edited tokens back in ``Point.write``); and
  ``discovery_call(denoiser, latent_h, latent_w)``, one forward on zeros for the token grids;
* the prompt: ``prompt_length(pipe, prompt)`` (the text encoder's limit, and whether it cuts);
* the pipeline call: ``pipeline_kwargs`` (extra keyword arguments of the pipeline's
  ``__call__``), ``pack_latents(noise)`` (the initial noise [1, channels, h, w] as the
  pipeline's ``latents`` takes it) and ``unpack_latents(tensor, latent_shape)`` (a denoiser
  call's sample or prediction back to [batch, channels, h, w]), ``decode(vae, latent)``;
  ``flow_matching`` (the family's sampler is ``flow-euler``; the ``FlowMatching`` mixin);
* CFG: ``batch_halves(guidance_scale)`` and ``no_uncond_reason`` (the preflight's check of
  ``generation.cfg_half``: a guidance-distilled family without a CFG batch holds ``cond``
  only, so asking for ``uncond`` stops the run with its reason), ``cfg_layout(batch)``
  ({half: row} of a denoiser batch; the trace names a half the batch lacks) and
  ``guided(prediction, guidance_scale)``;
* the x0 preview: ``predict_x0(scheduler, sample, prediction, timestep)`` (the default reads
  the scheduler's noise schedule and prediction type; a flow-matching family overrides it);
* a denoiser call: ``call_timestep``, ``call_sample`` (from its args and kwargs),
  ``call_prediction`` (from its output), ``replay_inputs`` (what replaying it needs: text
  embeddings, pooled embeddings, ``added_cond_kwargs``...) and ``replay(denoiser, inputs)``,
  for the permuted control;
* the VAE control: ``vae_module`` (the traced module's path under ``vae.decoder``) and
  ``vae_channels(vae)``;
* the free-space preflight: ``denoiser_config(root)`` (its config.json, if on this machine) and
  ``estimate(config, height, width)`` from it alone (no torch: it runs at the Snakefile's
  parse), with the named layer table that discovery would give (``uniform_estimate`` builds
  it for a family whose layers share one token grid), so ``generation.store`` is costed per
  layer.

Adding a family: one module in this package with its ``@register("name")`` adapter (imported at
the bottom of this file), a builder of a tiny random-weight model of the real architecture in
``ldmprobe.models.demo_models.BUILDERS`` (saved with ``save_pretrained`` and loaded back through
``load_pipeline``), and a test. Where a family differs from the U-Net defaults of ``Backbone``
(call arguments named ``hidden_states``, pooled embeddings and ``added_cond_kwargs`` in
``replay_inputs``, an image stream read by ``point``), it overrides that member only.

The modules of this package import torch and diffusers only inside functions: the Snakefile's
parse imports them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .trace import Point

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "stable-diffusion"

BACKBONES: dict[str, type[Backbone]] = {}


def register(name: str):
    def decorate(adapter):
        adapter.name = name
        BACKBONES[name] = adapter
        return adapter

    return decorate


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(
            f"config key 'models.diffusion.backbone': {name!r} is not a known backbone; "
            f"allowed: {sorted(BACKBONES)}"
        )
    return BACKBONES[name]()


def backbone_of(pipe) -> Backbone:
    """The adapter of a loaded pipeline, by its class name."""
    kind = type(pipe).__name__
    for adapter in BACKBONES.values():
        if kind in adapter.pipeline_classes:
            return adapter()
    raise ValueError(f"no backbone adapter knows {kind}; known: {sorted(BACKBONES)}")


@dataclass(frozen=True)
class Estimate:
    """What one denoiser call writes, from config files alone: (tokens, channels) of each
    probed layer, and the latent's shape (channels, height, width). ``table``: the layers
    themselves (``layers.Layer``, names for ``generation.store``) where the adapter can name
    them without torch; None: the disk preflight counts every layer (an upper bound)."""

    layers: list[tuple[int, int]]
    latent: tuple[int, int, int]
    table: list | None = None


class Backbone:
    """Base of the adapters; defaults are those of a U-Net pipeline called as
    ``denoiser(sample, timestep, encoder_hidden_states=...)`` with CFG batch [uncond, cond]."""

    name: ClassVar[str]  # set by register
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_attribute: ClassVar[str] = "unet"  # the pipeline's attribute, and its subfolder
    kind: ClassVar[str] = "unet"
    kind_label: ClassVar[str] = "U-Net"  # the denoiser in figure legends
    vae_module: ClassVar[str] = ""
    flow_matching: ClassVar[bool] = False
    pipeline_kwargs: ClassVar[dict] = {}

    # Loading ------------------------------------------------------------------------------
    def load_pipeline(self, path: Path, dtype):
        raise NotImplementedError

    def load_denoiser_on_meta(self, path: Path):
        raise NotImplementedError

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attribute)

    def denoiser_config(self, root: Path) -> dict | None:
        """The denoiser's config.json under a model folder, or None if it is not there."""
        path = root / self.denoiser_attribute / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # Latents and layers -------------------------------------------------------------------
    def latent_shape(
        self, denoiser, height: int, width: int, factor: int | None = None
    ) -> tuple[int, int, int]:
        raise NotImplementedError

    def short_name(self, module_path: str) -> tuple[str, str] | None:
        """Short name and block of a probed module's path; None for a module not probed. One
        naming for the discovered layers and the config-only table."""
        raise NotImplementedError

    def probed_modules(self, denoiser) -> dict[str, tuple[str, str]]:
        named = ((path, self.short_name(path)) for path, _module in denoiser.named_modules())
        return {path: names for path, names in named if names is not None}

    def uniform_estimate(
        self,
        config: dict,
        height: int,
        width: int,
        paths: list[str],
        latent_channels: int,
        patch: int = 2,
    ) -> Estimate:
        """The config-only estimate of a transformer whose probed layers (``paths``, the module
        paths in execution order) all see one token grid, the latent in ``patch`` x ``patch``
        tokens: the named table discovery gives (``layers.Layer``), from the config alone."""
        from .layers import Layer

        latent_h, latent_w = height // self.latent_factor, width // self.latent_factor
        grid = (latent_h // patch, latent_w // patch)
        channels = config["num_attention_heads"] * config["attention_head_dim"]
        table, per_block = [], {}
        for order, path in enumerate(paths):
            name, block = self.short_name(path)
            index = per_block.get(block, 0)
            per_block[block] = index + 1
            table.append(Layer(name, path, block, index, order, *grid, channels))
        return Estimate(
            layers=[(grid[0] * grid[1], channels)] * len(table),
            latent=(latent_channels, latent_h, latent_w),
            table=table,
        )

    def point(self, name: str, module_path: str) -> Point:
        return Point(name, module_path)

    def discovery_call(self, denoiser, latent_height: int, latent_width: int) -> None:
        raise NotImplementedError

    def pack_latents(self, noise):
        return noise

    def unpack_latents(self, tensor, latent_shape: tuple[int, int, int]):
        return tensor

    def decode(self, vae, latent):
        """The VAE's decoded image [1, 3, H, W] of a latent [1, channels, h, w]."""
        shift = getattr(vae.config, "shift_factor", None)
        latent = latent / vae.config.scaling_factor
        return vae.decode(latent if shift is None else latent + shift).sample

    # Prompt and CFG -----------------------------------------------------------------------
    def prompt_length(self, pipe, prompt: str) -> dict:
        raise NotImplementedError

    def batch_halves(self, guidance_scale: float) -> tuple[str, ...]:
        """The CFG halves a denoiser batch holds at this guidance scale (checked at parse time)."""
        return ("uncond", "cond") if guidance_scale > 1 else ("cond",)

    def no_uncond_reason(self, guidance_scale: float) -> str:
        """Why ``batch_halves`` lacks ``uncond``, for the config error."""
        return (
            f"generation.guidance_scale {guidance_scale} <= 1 runs without classifier-free guidance"
        )

    def cfg_layout(self, batch: int) -> dict[str, int]:
        """Row of each CFG half in a denoiser batch: [uncond, cond] with CFG, else cond."""
        if batch == 2:
            return {"uncond": 0, "cond": 1}
        if batch == 1:
            return {"cond": 0}
        raise ValueError(f"a {self.name} denoiser batch of {batch} is not a CFG batch of 1 image")

    def guided(self, prediction, guidance_scale: float):
        """The guided prediction of one image from a denoiser batch."""
        if prediction.shape[0] == 1:
            return prediction
        rows = self.cfg_layout(prediction.shape[0])
        uncond, cond = prediction[rows["uncond"]], prediction[rows["cond"]]
        return (uncond + guidance_scale * (cond - uncond))[None]

    def predict_x0(self, scheduler, sample, prediction, timestep):
        """The x0 prediction of one guided call, for the previews and ``latents/x0``."""
        from .schedule import alpha_bar, predict_x0

        abar = alpha_bar(scheduler, timestep)
        return predict_x0(sample, prediction, abar, scheduler.config.prediction_type)

    # One denoiser call --------------------------------------------------------------------
    def call_timestep(self, args, kwargs):
        return args[1] if len(args) > 1 else kwargs["timestep"]

    def call_sample(self, args, kwargs):
        return args[0] if args else kwargs["sample"]

    def call_prediction(self, output):
        return output[0] if isinstance(output, tuple) else output.sample

    def replay_inputs(self, args, kwargs) -> dict:
        raise NotImplementedError

    def replay(self, denoiser, inputs: dict) -> None:
        denoiser(**inputs, return_dict=False)

    # VAE control and preflight ------------------------------------------------------------
    def vae_channels(self, vae) -> int:
        raise NotImplementedError

    def estimate(self, config: dict, height: int, width: int) -> Estimate:
        """What one call writes at this image size, from the denoiser's config.json alone."""
        raise NotImplementedError


def load_on_meta(model_class: str, path: Path, subfolder: str):
    """A diffusers model's structure from its config.json, without weights (meta device)."""
    from ..core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import diffusers
    import torch

    model = getattr(diffusers, model_class)
    config = model.load_config(path, subfolder=subfolder)
    with torch.device("meta"):
        return model.from_config(config)


def load_named_pipeline(path: Path, allowed: tuple[str, ...], dtype, **options):
    """The pipeline class that ``model_index.json`` names (one of ``allowed``), loaded."""
    from ..core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import diffusers

    name = json.loads((path / "model_index.json").read_text())["_class_name"]
    if name not in allowed:
        raise ValueError(f"{path} holds a {name}; this backbone loads {list(allowed)}")
    return getattr(diffusers, name).from_pretrained(
        path, dtype=dtype, use_safetensors=True, **options
    )


class FlowMatching:
    """A family trained for flow matching (SD3, Flux): sampled with ``flow-euler``, and
    x_t = (1 - sigma) x0 + sigma noise with the model predicting noise - x0."""

    flow_matching = True

    def predict_x0(self, scheduler, sample, prediction, timestep):
        sigma = float(timestep) / scheduler.config.num_train_timesteps
        return sample - sigma * prediction


class WholeCallReplay:
    """Replays a denoiser call with all its recorded arguments: for families whose calls carry
    more than the sample, the timestep and the text embeddings (pooled embeddings, time ids,
    attention masks, position ids, guidance)."""

    def replay_inputs(self, args, kwargs) -> dict:
        return {"args": detached(args), "kwargs": detached(kwargs)}

    def replay(self, denoiser, inputs: dict) -> None:
        denoiser(*inputs["args"], **inputs["kwargs"])


def detached(value):
    """``value`` (a call's args or kwargs) with every tensor in it detached: what replaying the
    call needs, whatever the family passes (embeddings, ids, ``added_cond_kwargs``)."""
    if isinstance(value, dict):
        return {key: detached(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(detached(item) for item in value)
    return value.detach() if hasattr(value, "detach") else value


def default_text_length(pipe) -> int:
    """The T5 tokens a pipeline encodes when not told otherwise (its ``max_sequence_length``)."""
    import inspect

    return inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default


def prompt_tokens(tokenizer, prompt: str, limit: int, encoder: str) -> dict:
    """Tokens of ``prompt`` for one text encoder, and whether it sees only the first ``limit``."""
    count = len(tokenizer(prompt, truncation=False).input_ids)
    if count > limit:
        log.warning(
            "prompt is %d tokens; the %s text encoder sees only the first %d (truncated)",
            count,
            encoder,
            limit,
        )
    return {"prompt_tokens": count, "prompt_truncated": count > limit}


def weights_like(denoiser) -> dict:
    """The device and dtype of the denoiser's weights, for the inputs of a call made outside
    its pipeline (layer discovery): a float16 model on a GPU refuses float32 inputs."""
    weight = next(denoiser.parameters())
    return {"device": weight.device, "dtype": weight.dtype}


from . import (  # noqa: E402, F401
    flux,
    pixart,
    stable_diffusion,
    stable_diffusion_3,
    stable_diffusion_xl,
)
