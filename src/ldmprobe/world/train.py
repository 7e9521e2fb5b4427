"""Training the world's latent diffusion model with the libraries real models are made with.

Three stages, each a rule (``rules/world.smk``):

1. ``train_vae``: a diffusers ``AutoencoderKL`` on rendered scenes (4x compression, so 64 px
   renders give 16x16x4 latents, the token grid of the prototype);
2. ``encode_latents``: the training set's latent distributions, cached once;
3. ``train_diffusion``: a ``UNet2DConditionModel`` and a CLIP text encoder trained together on
   the cached latents, with classifier-free caption dropout, saved with the VAE, a tokenizer
   and a DDIM scheduler as a ``StableDiffusionPipeline`` folder (fp16 safetensors) that
   generation loads exactly as it loads Stable Diffusion.

Every stage is deterministic on the CPU for a given thread count: the batch of step ``s`` is
drawn from a generator seeded by (seed, s), so a run resumed from a checkpoint equals an
uninterrupted one. Checkpoints hold the model, optimiser, EMA and step, and are resumed only
when their recipe equals the current one.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ..core.compat import ensure_torchvision_importable
from ..core.io import atomic_directory, atomic_file, write_json
from ..core.metrics import iou, psnr

log = logging.getLogger(__name__)

# Idle OpenMP threads sleep instead of spinning: on a shared machine (load above the cores)
# spinning threads burnt 5x the CPU time of the work (U-Net step at batch 64: 6.5 CPU-s with
# two spinning threads, 1.2 CPU-s passive). Read when torch starts its thread pool, so it is
# set here, before any torch import of a training job.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class VaeRecipe:
    channels: tuple[int, ...] = (32, 64, 64)  # 3 blocks: 4x compression
    layers_per_block: int = 1
    steps: int = 1200
    batch: int = 16
    crop: int = 32  # fully convolutional without mid-block attention: crops cost a quarter
    lr: float = 1e-3
    kl_weight: float = 1e-6
    edge_weight: float = 0.5  # L1 on image gradients: sharp object outlines
    # Objects are ~10% of the pixels: weighing their L1 up keeps their colours (the first VAE,
    # unweighted, drew them grey-brown, and the palette rule that labels saliency missed them).
    object_weight: float = 1.0
    # SD's VAE has attention in its mid blocks, which the VAE control reads; off, crops work.
    mid_attention: bool = False


@dataclass(frozen=True)
class DiffusionRecipe:
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    heads: int = 2  # diffusers' `attention_head_dim` is the number of heads here
    cross_attention_dim: int = 32
    text_layers: int = 2
    steps: int = 400
    batch: int = 64
    lr: float = 1e-3
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999


@dataclass(frozen=True)
class Recipe:
    size: int = 64
    data_seed: int = 0
    train_images: int = 4000
    heldout_images: int = 256
    seed: int = 0
    # Mixed precision on a CUDA device (bfloat16 autocast); the CPU always trains in float32.
    cuda_autocast: bool = True
    checkpoint_every: int = 200
    log_every: int = 50
    vae: VaeRecipe = field(default_factory=VaeRecipe)
    diffusion: DiffusionRecipe = field(default_factory=DiffusionRecipe)

    @classmethod
    def from_dict(cls, data: dict | None) -> Recipe:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"world recipe: unknown keys {sorted(unknown)}")
        parts = {}
        for name, part in (("vae", VaeRecipe), ("diffusion", DiffusionRecipe)):
            section = dict(data.pop(name, None) or {})
            bad = set(section) - {f.name for f in fields(part)}
            if bad:
                raise ValueError(f"world recipe: unknown keys {sorted(bad)} in '{name}'")
            if "channels" in section:
                section["channels"] = tuple(section["channels"])
            parts[name] = part(**section)
        return cls(**data, **parts)

    def to_dict(self) -> dict:
        return asdict(self)

    def vae_part(self) -> dict:
        """What the VAE depends on: everything but the diffusion settings."""
        return {k: v for k, v in self.to_dict().items() if k != "diffusion"}


# --- data ---------------------------------------------------------------------------------


def rendered_split(recipe: Recipe) -> dict:
    """The training and held-out renders: images [n, H, W, 3] uint8, their object masks and
    captions.

    One dataset of ``train_images + heldout_images`` scenes, the last ones held out (scene i
    depends only on (data seed, i), so the split never changes with the held-out count)."""
    from .. import scenes

    count = recipe.train_images + recipe.heldout_images
    scene_list, arrays = _rendered(recipe.data_seed, count, recipe.size)
    captions = [scenes.caption(scene) for scene in scene_list]
    n = recipe.train_images
    return {
        "train": arrays["image"][:n],
        "train_mask": arrays["mask"][:n],
        "train_captions": captions[:n],
        "heldout": arrays["image"][n:],
        "heldout_captions": captions[n:],
    }


@functools.lru_cache(maxsize=1)
def _rendered(seed: int, count: int, size: int):
    """One render of the dataset per process: the three stages and the evaluation share it
    when they run in one process (a GPU run renders 20,000 scenes once, not four times)."""
    from .. import scenes

    return scenes.render_dataset(seed, count, size, processes=os.cpu_count() or 1)


def to_tensor(images):
    """uint8 [n, H, W, 3] (numpy or torch, on any device) -> float [n, 3, H, W] in [-1, 1],
    as the SD VAE expects."""
    import torch

    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def step_generator(seed: int, step: int, device: str = "cpu"):
    import torch

    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)


def resolve_device(device: str) -> str:
    """``auto``: CUDA when there is one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("world.device is cuda, but torch sees no CUDA device")
    return device


def autocast(recipe: Recipe, device: str):
    """bfloat16 autocast on CUDA when the recipe asks for it; a no-op context on the CPU."""
    import contextlib

    import torch

    if device == "cuda" and recipe.cuda_autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(base: float, step: int, steps: int, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def mean_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between images [n, H, W, 3] on the uint8 scale."""
    return float(np.mean([psnr(x, y) for x, y in zip(a, b, strict=True)]))


# --- checkpoints --------------------------------------------------------------------------


class Checkpoint:
    """One file with the training state; resumed only for the same recipe."""

    def __init__(self, path: str | Path, recipe: dict):
        self.path = Path(path)
        self.recipe = recipe

    def load(self) -> dict | None:
        import torch

        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)
        if state.get("recipe") != self.recipe:
            log.warning("checkpoint %s is of another recipe; starting afresh", self.path)
            return None
        log.info("resuming from %s at step %d", self.path, state["step"])
        return state

    def remove(self) -> None:
        """Once the stage's output is written: a later run starts from scratch."""
        self.path.unlink(missing_ok=True)

    def save(self, state: dict) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            torch.save({**state, "recipe": self.recipe}, tmp)


class Progress:
    """Logs loss, speed and CPU time every ``every`` steps."""

    def __init__(self, name: str, steps: int, every: int, start: int = 0):
        self.name, self.steps, self.every = name, steps, every
        self.wall, self.cpu, self.start = time.perf_counter(), time.process_time(), start
        self.losses: list[float] = []

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            done = step + 1 - self.start
            wall = time.perf_counter() - self.wall
            log.info(
                "%s step %d/%d loss %.5f lr %.2e | %.3f s/step, cpu %.0f s, eta %.0f s",
                self.name,
                step + 1,
                self.steps,
                float(np.mean(self.losses)),
                lr,
                wall / done,
                time.process_time() - self.cpu,
                wall / done * (self.steps - step - 1),
            )
            self.losses.clear()

    def times(self) -> dict:
        return {
            "wall_s": round(time.perf_counter() - self.wall, 1),
            "cpu_s": round(time.process_time() - self.cpu, 1),
            "load_average": [round(x, 2) for x in _load_average()],
        }


def _load_average() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return ()


# --- 1. the VAE ---------------------------------------------------------------------------


def build_vae(recipe: Recipe):
    ensure_torchvision_importable()
    from diffusers import AutoencoderKL

    channels = recipe.vae.channels
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=recipe.vae.layers_per_block,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=recipe.size,
        mid_block_add_attention=recipe.vae.mid_attention,
    )


def image_gradients(x):
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def train_vae(
    recipe: Recipe, out_dir: str | Path, checkpoint_path: str | Path, device: str = "cpu"
) -> dict:
    """Train the VAE, set its latent scaling factor, save it; returns its held-out quality.

    On the CPU every batch comes from a generator seeded by (seed, step): deterministic and
    resumable. On CUDA the batches are drawn the same way, the noise on the device (fast, not
    bit-reproducible across GPUs)."""
    ensure_torchvision_importable()
    import torch

    device = resolve_device(device)
    torch.manual_seed(recipe.seed)
    data = rendered_split(recipe)
    train = torch.from_numpy(data["train"]).to(device)
    objects = torch.from_numpy(data["train_mask"]).to(device)
    vae = build_vae(recipe).to(device)
    log.info("VAE: %.2fM parameters, on %s", sum(p.numel() for p in vae.parameters()) / 1e6, device)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae.lr, weight_decay=0.0)
    checkpoint = Checkpoint(checkpoint_path, recipe.vae_part())
    start = 0
    if state := checkpoint.load():
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    r, size, crop = recipe.vae, recipe.size, recipe.vae.crop
    progress = Progress("vae", r.steps, recipe.log_every, start)
    vae.train()
    for step in range(start, r.steps):
        g = step_generator(recipe.seed, step)
        idx = torch.randint(len(train), (r.batch,), generator=g).to(device)
        y0, x0 = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=g))
        window = (slice(None), slice(y0, y0 + crop), slice(x0, x0 + crop))
        x = to_tensor(train.index_select(0, idx)[window])
        weight = 1.0 + (r.object_weight - 1.0) * objects.index_select(0, idx)[window].float()
        weight = (weight / weight.mean())[:, None]
        lr = cosine_lr(r.lr, step, r.steps)
        loss = optimiser_step(opt, vae_loss(vae, x, weight, recipe, device, g), lr)
        progress.step(step, loss.item(), lr)
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < r.steps:
            checkpoint.save(
                {"model": vae.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}
            )
    times = {**progress.times(), "device": device_name(device)}
    vae.eval()
    # SD's scaling factor: the latents' inverse standard deviation on training images, so the
    # diffusion model sees unit-variance latents.
    with torch.no_grad():
        sample = to_tensor(train[:512])
        std = float(torch.cat([vae.encode(c).latent_dist.mean for c in sample.split(64)]).std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    quality = {"heldout_psnr_db": reconstruction_psnr(vae, data["heldout"]), "latent_std": std}
    log.info("VAE held-out PSNR %.2f dB (%s)", quality["heldout_psnr_db"], times)
    with atomic_directory(out_dir) as tmp:
        vae.to("cpu").save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "training.json", {"recipe": recipe.vae_part(), **times, **quality})
    checkpoint.remove()
    return quality


def vae_loss(vae, x, weight, recipe: Recipe, device: str, generator):
    """One VAE batch's loss: the object-weighted L1 of the reconstruction of ``x`` through a
    posterior sample, the edge term and the KL term. The sample's noise comes from
    ``generator`` (the step's, on the CPU) on every device, so the CPU and CUDA runs draw
    the same noise."""
    import torch

    r = recipe.vae
    with autocast(recipe, device):
        posterior = vae.encode(x).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
        out = vae.decode(posterior.mean + posterior.std * eps).sample.float()
    loss = ((out - x).abs() * weight).mean()
    if r.edge_weight:
        for a, b in zip(image_gradients(out), image_gradients(x), strict=True):
            loss = loss + r.edge_weight * (a - b).abs().mean()
    return loss + r.kl_weight * posterior.kl().float().mean()


def optimiser_step(opt, loss, lr: float, clip: list | None = None):
    """One update at learning rate ``lr`` (with ``clip``, those parameters' gradient norm
    clipped to 1); returns the loss."""
    import torch

    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    return loss


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def reconstruction_psnr(vae, images: np.ndarray) -> float:
    import torch

    device, dtype = vae.device, vae.dtype
    with torch.no_grad():
        out = [
            vae.decode(vae.encode(x.to(device, dtype)).latent_dist.mean).sample.float().cpu()
            for x in to_tensor(images).split(64)
        ]
    recon = torch.cat(out).clamp(-1, 1).add(1).mul(127.5).round().byte()
    return mean_psnr(recon.permute(0, 2, 3, 1).numpy(), images)


# --- 2. cached latents --------------------------------------------------------------------


def encode_latents(
    recipe: Recipe, vae_dir: str | Path, out_path: str | Path, device: str = "cpu"
) -> None:
    """The training set's latent distributions (scaled mean and std) and captions, once."""
    ensure_torchvision_importable()
    import torch
    from diffusers import AutoencoderKL

    device = resolve_device(device)
    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).to(device).eval()
    data = rendered_split(recipe)
    scale = vae.config.scaling_factor
    means, stds = [], []
    with torch.no_grad():
        for x in to_tensor(data["train"]).split(128):
            dist = vae.encode(x.to(device)).latent_dist
            means.append(dist.mean.cpu() * scale)
            stds.append(dist.std.cpu() * scale)
    with atomic_file(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            mean=torch.cat(means).numpy(),
            std=torch.cat(stds).numpy(),
            captions=np.array(data["train_captions"]),
        )
    log.info("cached %d latents of shape %s", len(data["train"]), tuple(means[0].shape[1:]))


# --- 3. the U-Net and text encoder --------------------------------------------------------


def caption_tokenizer(captions: list[str]):
    """A CLIP tokenizer whose vocabulary holds every byte (so any text tokenizes) and, through
    BPE merges, every word of the captions as one token: a three-object caption is ~20
    tokens instead of ~80 bytes (more than CLIP's 77)."""
    from transformers import CLIPTokenizer

    from ..models.demo_models import clip_byte_vocabulary

    vocabulary = clip_byte_vocabulary()
    merges: list[tuple[str, str]] = []
    words = sorted({w for text in captions for w in re.findall(r"[a-z]+", text.lower())})
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            merged = symbols[0] + symbols[1]
            if pair not in merges:
                merges.append(pair)
            vocabulary.setdefault(merged, len(vocabulary))
            symbols = [merged, *symbols[2:]]
    # Special tokens last: CLIP's ids of start and end follow the ordinary vocabulary.
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocabulary[special] = vocabulary.pop(special)
    vocabulary = {token: index for index, token in enumerate(vocabulary)}
    return CLIPTokenizer(vocab=vocabulary, merges=merges, model_max_length=77)


def build_text_encoder(recipe: Recipe, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    d = recipe.diffusion
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=d.cross_attention_dim,
            intermediate_size=2 * d.cross_attention_dim,
            num_hidden_layers=d.text_layers,
            num_attention_heads=d.heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet(recipe: Recipe, latent_size: int):
    ensure_torchvision_importable()
    from diffusers import UNet2DConditionModel

    d = recipe.diffusion
    n = len(d.channels)
    # SD's layout: attention in every block but the deepest.
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=d.channels,
        layers_per_block=d.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=d.cross_attention_dim,
        attention_head_dim=d.heads,
        norm_num_groups=8,
    )


def make_scheduler():
    """SD v1.x's noise schedule; DDIM is what the pipeline folder names (the study's config
    may swap it, as for SD)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def add_noise(abar, z0, noise, t):
    """The forward process q(z_t | z_0), as DDPM's ``add_noise``, on ``abar``'s device."""
    a = abar[t].view(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


class Ema:
    """Exponential moving average of parameters, with the usual warm-up of its decay."""

    def __init__(self, modules, decay: float):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    def update(self, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    def copy_to_params(self) -> None:
        import torch

        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)


def train_diffusion(
    recipe: Recipe,
    vae_dir: str | Path,
    latents_path: str | Path,
    out_dir: str | Path,
    checkpoint_path: str | Path,
    device: str = "cpu",
) -> dict:
    """Train U-Net and text encoder on the cached latents; save the pipeline folder."""
    ensure_torchvision_importable()
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    device = resolve_device(device)
    torch.manual_seed(recipe.seed)
    cached = np.load(latents_path)
    mean = torch.from_numpy(cached["mean"]).to(device)
    std = torch.from_numpy(cached["std"]).to(device)
    captions = [str(c) for c in cached["captions"]]
    tokenizer = caption_tokenizer(captions)
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids, empty = ids.to(device), empty.to(device)
    text_encoder = build_text_encoder(recipe, tokenizer).to(device)
    unet = build_unet(recipe, mean.shape[-1]).to(device)
    scheduler = make_scheduler()
    d = recipe.diffusion
    log.info(
        "U-Net %.2fM, text encoder %.2fM parameters; %d latents %s; vocabulary %d; on %s",
        sum(p.numel() for p in unet.parameters()) / 1e6,
        sum(p.numel() for p in text_encoder.parameters()) / 1e6,
        len(mean),
        tuple(mean.shape[1:]),
        len(tokenizer),
        device,
    )
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=d.lr, weight_decay=1e-2)
    ema = Ema([unet, text_encoder], d.ema_decay)
    checkpoint = Checkpoint(checkpoint_path, recipe.to_dict())
    start = 0
    if state := checkpoint.load():
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        ema.shadow = state["ema"]
        start = state["step"]
    abar = scheduler.alphas_cumprod.to(device)
    snr = abar / (1 - abar)
    # Min-SNR-gamma weighting of the epsilon loss (Hang et al. 2023): faster convergence.
    weight = torch.clamp(snr, max=d.min_snr_gamma) / snr
    progress = Progress("diffusion", d.steps, recipe.log_every, start)
    unet.train()
    text_encoder.train()
    for step in range(start, d.steps):
        # Everything random comes from (seed, step): on the CPU from one CPU generator (bit
        # for bit resumable), on CUDA from a device generator (no host-to-device copies).
        g = step_generator(recipe.seed, step, device)
        shape = (d.batch, *mean.shape[1:])
        idx = torch.randint(len(mean), (d.batch,), generator=g, device=device)
        noise_z = torch.randn(shape, generator=g, device=device)
        z0 = mean.index_select(0, idx) + std.index_select(0, idx) * noise_z
        t = torch.randint(
            0, scheduler.config.num_train_timesteps, (d.batch,), generator=g, device=device
        )
        noise = torch.randn(shape, generator=g, device=device)
        zt = add_noise(abar, z0, noise, t)
        drop = torch.rand(d.batch, generator=g, device=device) < d.caption_dropout
        tokens = torch.where(drop[:, None], empty, ids.index_select(0, idx))
        lr = cosine_lr(d.lr, step, d.steps)
        loss = diffusion_loss(unet, text_encoder, zt, t, tokens, noise, weight[t], recipe, device)
        optimiser_step(opt, loss, lr, clip=params)
        ema.update(step)
        progress.step(step, loss.item(), lr)
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < d.steps:
            checkpoint.save(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "optimizer": opt.state_dict(),
                    "ema": ema.shadow,
                    "step": step + 1,
                }
            )
    times = {**progress.times(), "device": device_name(device)}
    ema.copy_to_params()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True),
        text_encoder=text_encoder.to("cpu").eval(),
        tokenizer=tokenizer,
        unet=unet.to("cpu").eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    vae_training = json.loads((Path(vae_dir) / "training.json").read_text())
    with atomic_directory(out_dir) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        log.info("saved the pipeline (%s); evaluating it", times)
        quality, samples = evaluate_pipeline(tmp, recipe, device=device)
        record = {
            "what": "the known-answer world's latent diffusion model (issue 15), trained from "
            "scratch by ldmprobe.world.train (rules/world.smk; bench/world_gpu.py on a GPU)",
            "recipe": recipe.to_dict(),
            "data_seed": recipe.data_seed,
            "versions": library_versions(),
            "training": {
                "vae": {
                    k: vae_training[k]
                    for k in ("wall_s", "cpu_s", "load_average", "device")
                    if k in vae_training
                },
                "diffusion": times,
                "threads": torch.get_num_threads(),
            },
            "quality": quality,
        }
        write_json(tmp / "RECIPE.json", record)
        save_grid(tmp / "samples.png", samples[:16])
    checkpoint.remove()
    log.info("quality: %s", json.dumps(quality))
    return record


def diffusion_loss(unet, text_encoder, zt, t, tokens, noise, weight, recipe: Recipe, device: str):
    """One batch's epsilon loss of U-Net and text encoder, each sample weighted by ``weight``
    (its timestep's min-SNR weight)."""
    import torch.nn.functional as F

    with autocast(recipe, device):
        hidden = text_encoder(tokens).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=hidden).sample.float()
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()


def save_grid(path: Path, images: np.ndarray, columns: int = 8) -> None:
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, image in enumerate(images):
        grid[
            (i // columns) * h : (i // columns + 1) * h, (i % columns) * w : (i % columns + 1) * w
        ] = image
    Image.fromarray(grid).save(path)


def library_versions() -> dict:
    import platform
    from importlib.metadata import version

    packages = ("torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}


# --- quality of the saved pipeline --------------------------------------------------------

EVALUATION = {
    "samples": 64,
    "sample_steps": 20,
    "guidance_scale": 4.0,
    "inversions": 16,
    "min_blob_pixels": 6,
}


def object_count(image: np.ndarray, min_pixels: int) -> int:
    """Objects in an image by the palette rule: connected blobs of palette pixels, each colour
    on its own (touching objects of different colours stay apart), of ``min_pixels`` or more."""
    from scipy import ndimage

    from .. import scenes

    mask = scenes.palette_mask(image)
    rgb = image.astype(np.float32) / np.maximum(image.max(axis=-1, keepdims=True), 1.0)
    palette = np.array(list(scenes.PALETTE.values()), np.float32)
    palette /= palette.max(axis=1, keepdims=True)
    nearest = np.linalg.norm(rgb[..., None, :] - palette, axis=-1).argmin(axis=-1)
    count = 0
    for colour in range(len(palette)):
        labels, n = ndimage.label(mask & (nearest == colour))
        sizes = np.bincount(labels.ravel())[1:]
        count += int((sizes >= min_pixels).sum())
    return count


def evaluate_pipeline(
    folder: str | Path, recipe: Recipe, seed: int = 0, device: str = "cpu"
) -> dict:
    """The saved folder, loaded as generation loads SD: VAE PSNR on held-out renders, the
    fraction of samples (held-out captions) whose palette blobs match the caption's object
    count (beside the same fraction on the renders: the rule's own ceiling), and route (b)'s
    regeneration PSNR from DDIM-inverted renders."""
    import torch

    from .. import scenes
    from ..generation.inversion import ddim_invert, regenerate
    from ..models import ModelRef, load_diffusion_pipeline

    e = EVALUATION
    pipe = load_diffusion_pipeline(ModelRef("world", str(folder)), "ddim", "float32", device)
    count = recipe.train_images + recipe.heldout_images
    scene_list, arrays = scenes.render_dataset(recipe.data_seed, count, recipe.size)
    heldout, images = scene_list[recipe.train_images :], arrays["image"][recipe.train_images :]
    captions = [scenes.caption(s) for s in heldout]
    quality = {"evaluation": e, "heldout_images": len(images)}
    quality["vae_heldout_psnr_db"] = round(reconstruction_psnr(pipe.vae, images), 2)

    n = min(e["samples"], len(heldout))
    samples = []
    for start in range(0, n, 16):
        generator = torch.Generator(device).manual_seed(seed + start)
        with torch.no_grad():
            out = pipe(
                captions[start : min(n, start + 16)],
                height=recipe.size,
                width=recipe.size,
                num_inference_steps=e["sample_steps"],
                guidance_scale=e["guidance_scale"],
                generator=generator,
                output_type="np",
            )
        samples.append((out.images * 255).round().astype(np.uint8))
    samples = np.concatenate(samples)
    wanted = np.array([len(s.objects) for s in heldout[:n]])
    drawn = np.array([object_count(im, e["min_blob_pixels"]) for im in samples])
    rendered = np.array([object_count(im, e["min_blob_pixels"]) for im in images[:n]])
    quality["samples"] = n
    quality["sample_count_match"] = round(float((drawn == wanted).mean()), 3)
    quality["render_count_match"] = round(float((rendered == wanted).mean()), 3)

    k = min(e["inversions"], len(heldout))
    regen_psnr, ious = [], []
    for i in range(k):
        start = ddim_invert(pipe, images[i], captions[i], e["sample_steps"])
        redrawn = regenerate(pipe, start, captions[i], e["sample_steps"], 1.0)
        regen_psnr.append(psnr(redrawn, images[i]))
        ious.append(iou(scenes.palette_mask(redrawn), scenes.palette_mask(images[i])))
    recon_psnr = reconstruction_psnr(pipe.vae, images[:k])
    quality["inversion"] = {
        "images": k,
        "steps": e["sample_steps"],
        "guidance_scale": 1.0,
        "regeneration_psnr_db": round(float(np.mean(regen_psnr)), 2),
        "vae_reconstruction_psnr_db": round(recon_psnr, 2),
        "palette_mask_iou": round(float(np.mean(ious)), 3),
    }
    return quality, samples
