"""Route (b) of the known-answer world: start generation from a DDIM inversion of a render.

Deterministic DDIM inversion (guidance 1, the caption as condition) walks a rendered scene's
latent up the DDIM schedule to x_T; DDIM sampling from that x_T redraws the scene, so the
renderer's exact maps label the whole trajectory. The catch (issue 15): the inverted start is
not Gaussian noise and still carries the scene, so early-step probe scores are inflated; read
emergence from route (a).
"""

from __future__ import annotations

import numpy as np


def ddim_invert(pipe, image: np.ndarray, prompt: str, steps: int):
    """x_T [1, 4, h, w] that DDIM sampling (``steps`` steps) maps back to ``image``.

    ``image``: uint8 [H, W, 3]. Uses the pipeline's own scheduler timesteps, which must be
    DDIM's: inversion retraces exactly the steps the sampler will take.
    """
    import torch
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise ValueError(
            f"DDIM inversion needs generation.scheduler: ddim, not {type(pipe.scheduler).__name__}"
        )
    device, dtype = pipe.device, pipe.unet.dtype
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    abar = scheduler.alphas_cumprod.to(device)
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device, dtype) / 127.5 - 1.0
        z = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        hidden, _ = pipe.encode_prompt(prompt, device, 1, False)
        for i in reversed(range(len(timesteps))):
            t = timesteps[i]
            # The step the sampler takes from t lands on the next timestep (or on the final
            # alpha); inversion goes the other way along the same pair.
            lower = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else None
            a_lower = scheduler.final_alpha_cumprod.to(device) if lower is None else lower
            a_t = abar[t]
            eps = pipe.unet(z, t, encoder_hidden_states=hidden).sample
            x0 = (z - (1 - a_lower).sqrt() * eps) / a_lower.sqrt()
            z = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
    return z


def regenerate(pipe, start, prompt: str, steps: int, guidance_scale: float) -> np.ndarray:
    """DDIM sampling from ``start``: uint8 [H, W, 3]."""
    import torch

    size = start.shape[-1] * pipe.vae_scale_factor
    with torch.no_grad():
        out = pipe(
            prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            latents=start,
            output_type="np",
        )
    return (out.images[0] * 255).round().astype(np.uint8)


def started_scene(prompt: str, seed: int, start: dict):
    """The scene a route (b) row starts from: scene ``seed`` of ``start["data_seed"]``, whose
    caption must be the row's prompt (else the renderer's maps would not label what is drawn).
    Generation (``inverted_start``) and the ``world`` labeler's ``scene: render`` both ask here."""
    from .. import scenes

    scene = scenes.sample_scene(scenes.scene_rng(start["data_seed"], seed))
    if scenes.caption(scene) != prompt:
        raise ValueError(
            f"generation.start world-inversion: the prompt {prompt!r} is not the caption of "
            f"scene {seed} of data seed {start['data_seed']} ({scenes.caption(scene)!r})"
        )
    return scene


def recorded_scene(record: dict):
    """The scene a generation record (its ``meta.json``) says the image started from: route
    (b)'s ``started_scene`` of the record's prompt, seed and start; an image started from
    anything but a render has none."""
    start = record.get("start") or {"kind": "noise"}
    if start.get("kind") != "world-inversion":
        raise ValueError(
            f"its generation record says it started from {start.get('kind')!r}; route (b) "
            "needs images generated from a render (generation.start: {kind: world-inversion, "
            f"data_seed: n}}), not from {start.get('kind')!r}"
        )
    return started_scene(record["prompt"], int(record["seed"]), start)


def inverted_start(pipe, prompt: str, seed: int, start: dict, size: int, steps: int):
    """Route (b)'s x_T for a prompt-table row: the render of its ``started_scene`` at ``size``
    px, inverted with its caption."""
    from .. import scenes

    image = scenes.render(started_scene(prompt, seed, start), size).image
    return ddim_invert(pipe, image, prompt, steps)
