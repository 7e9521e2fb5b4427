"""Trains the known-answer world's latent diffusion model on a CUDA GPU in a fixed time budget.

The stages are the rules' own functions (``ldmprobe.world.train``: ``train_vae``,
``encode_latents``, ``train_diffusion``, which evaluates the saved pipeline), run in one process
with ``device="cuda"``. The only thing this script adds is the size of the run: it times a few
optimiser steps of each stage's model on the device first, then sets the recipe's step counts
so that the stage fits its share of ``--minutes``. The recipe it settles on is the one recorded
in the pipeline's RECIPE.json (and printed), so ``config/world.yaml`` can name it and
``make world-weights`` on a GPU retrains the same world.

Usage (on the GPU machine): python bench/world_gpu.py --variant latent16 --out DIR --minutes 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

# What both variants share: 20,000 renders, whole 64 px images through a VAE with the objects'
# L1 weighed up and SD's mid-block attention, a 3-layer text encoder of width 128.
VAE = {"batch": 64, "crop": 64, "lr": 5e-4, "object_weight": 6.0, "mid_attention": True}
DIFFUSION = {
    "heads": 4,
    "cross_attention_dim": 128,
    "text_layers": 3,
    "batch": 256,
    "lr": 5e-4,
    "ema_decay": 0.9995,
}

# Each variant: overrides of ldmprobe.world.train.Recipe. Both render 64 px scenes (the size
# the world's labelers and exact fit work at); they differ in the VAE's compression.
VARIANTS = {
    # 4x VAE: 16x16x4 latents, as the CPU recipe.
    "latent16": {
        "train_images": 20000,
        "vae": {**VAE, "channels": [64, 128, 128], "layers_per_block": 1},
        "diffusion": {**DIFFUSION, "channels": [64, 128, 128], "layers_per_block": 1},
    },
    # 2x VAE: 32x32x4 latents, a finer token grid for the probes (2x2 pixels per token); a
    # narrower U-Net keeps its CPU sampling cost near the 16x16 one's.
    "latent32": {
        "train_images": 20000,
        "vae": {**VAE, "channels": [64, 128], "layers_per_block": 1},
        "diffusion": {**DIFFUSION, "channels": [32, 64, 128], "layers_per_block": 2},
    },
}

# Shares of the budget: the rest goes to rendering, caching latents, saving and evaluating.
VAE_SHARE, DIFFUSION_SHARE = 0.25, 0.6
STEP_QUANTUM = 100

log = logging.getLogger("world_gpu")


def time_steps(step, warmup: int = 5, timed: int = 20) -> float:
    """Seconds per call of ``step`` (a training step), after a warm-up."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(timed):
        step()
    sync()
    return (time.perf_counter() - start) / timed


def vae_step_time(recipe, device: str) -> float:
    """Seconds per VAE training step: the training loop's own loss and update
    (``train.vae_loss``, ``train.optimiser_step``) on a random batch of its shape."""
    import torch

    from ldmprobe.world import train

    vae = train.build_vae(recipe).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    x = torch.rand(recipe.vae.batch, 3, recipe.vae.crop, recipe.vae.crop, device=device) * 2 - 1
    weight = torch.ones(recipe.vae.batch, 1, recipe.vae.crop, recipe.vae.crop, device=device)
    generator = train.step_generator(recipe.seed, 0)

    def step():
        train.optimiser_step(opt, train.vae_loss(vae, x, weight, recipe, device, generator), 1e-4)

    return time_steps(step)


def diffusion_step_time(recipe, latent_size: int, device: str) -> float:
    """Seconds per U-Net and text-encoder training step: the loop's own loss and update
    (``train.diffusion_loss``, ``train.optimiser_step``), on random latents and captions
    of the training renders."""
    import torch

    from ldmprobe.world import train

    d = recipe.diffusion
    captions = train.rendered_split(recipe)["train_captions"][: d.batch]
    tokenizer = train.caption_tokenizer(captions)
    tokens = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")
    tokens = tokens.input_ids.to(device)
    text_encoder = train.build_text_encoder(recipe, tokenizer).to(device)
    unet = train.build_unet(recipe, latent_size).to(device)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    z = torch.randn(len(captions), 4, latent_size, latent_size, device=device)
    t = torch.randint(0, 1000, (len(captions),), device=device)
    weight = torch.ones(len(captions), device=device)

    def step():
        loss = train.diffusion_loss(unet, text_encoder, z, t, tokens, z, weight, recipe, device)
        train.optimiser_step(opt, loss, 1e-4, clip=params)

    return time_steps(step)


def steps_for(seconds: float, step_time: float) -> int:
    """Whole hundreds of steps, at least ten (a smoke run on the CPU)."""
    steps = int(seconds / step_time)
    return max(10, steps // STEP_QUANTUM * STEP_QUANTUM if steps >= STEP_QUANTUM else steps)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args.add_argument("--out", type=Path, required=True, help="work folder; pipeline/ inside")
    args.add_argument("--minutes", type=float, default=6.0, help="wall-time budget")
    args.add_argument("--device", default="cuda")
    args.add_argument("--override", type=json.loads, default={}, help="recipe keys (JSON)")
    args = args.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from ldmprobe.core.compat import ensure_torchvision_importable
    from ldmprobe.world import train

    ensure_torchvision_importable()
    begin = time.perf_counter()
    budget = args.minutes * 60
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    variant = VARIANTS[args.variant]
    for key, value in args.override.items():
        variant = {**variant, key: {**variant[key], **value} if isinstance(value, dict) else value}
    recipe = train.Recipe.from_dict(variant)
    # Render first, before CUDA starts: the renderer's worker processes are forked.
    train.rendered_split(recipe)
    factor = 2 ** (len(recipe.vae.channels) - 1)
    latent_size = recipe.size // factor
    vae_time = vae_step_time(recipe, args.device)
    diffusion_time = diffusion_step_time(recipe, latent_size, args.device)
    sizing = {
        "variant": args.variant,
        "budget_s": budget,
        "vae_s_per_step": round(vae_time, 5),
        "diffusion_s_per_step": round(diffusion_time, 5),
        "device": train.device_name(args.device),
    }
    recipe = dataclasses.replace(
        recipe,
        vae=dataclasses.replace(recipe.vae, steps=steps_for(VAE_SHARE * budget, vae_time)),
        diffusion=dataclasses.replace(
            recipe.diffusion, steps=steps_for(DIFFUSION_SHARE * budget, diffusion_time)
        ),
        checkpoint_every=10**9,  # one process, one run: no checkpoints in the budget
        log_every=200,
    )
    log.info("sizing %s; recipe %s", json.dumps(sizing), json.dumps(recipe.to_dict()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sizing.json").write_text(json.dumps({**sizing, "recipe": recipe.to_dict()}))
    vae_dir, latents = args.out / "vae", args.out / "latents.npz"
    train.train_vae(recipe, vae_dir, args.out / "ck" / "vae.pt", device=args.device)
    train.encode_latents(recipe, vae_dir, latents, device=args.device)
    record = train.train_diffusion(
        recipe, vae_dir, latents, args.out / "pipeline", args.out / "ck" / "d.pt", args.device
    )
    sizing["wall_s"] = round(time.perf_counter() - begin, 1)
    (args.out / "sizing.json").write_text(json.dumps({**sizing, "recipe": recipe.to_dict()}))
    log.info("done in %.0f s; quality %s", sizing["wall_s"], json.dumps(record["quality"]))


if __name__ == "__main__":
    main()
