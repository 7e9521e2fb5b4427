"""Item 6, the reference scheme: U-Net calls of this workflow vs regenerating per probe.

This workflow generates each image once and stores every layer at every U-Net call:
``calls x images``. The reference implementations regenerate all images up to the probed
step for each probing run (REFERENCE.md): ``sum over probed (step, unit) of (step + 1) x
images``, where a probing run selects one module by block type, block index and layer, so the
unit is a layer; the count per (step, block), one run serving all layers of a block, is given
too. Layers, blocks and U-Net calls come from the model's structure and the configured
schedule (the full-size SD v1.4 U-Net on the meta device: no weights), not from constants.
"""

from __future__ import annotations

from benchlib import REPO, parser, record

from ldmprobe.core.config import load_config


def count_calls(steps: list[int], units: int, images: int, calls_per_image: int) -> dict:
    workflow = calls_per_image * images
    reference = sum(step + 1 for step in steps) * units * images
    return {"workflow_calls": workflow, "reference_calls": reference, "ratio": reference / workflow}


def grid(config: dict) -> tuple[list, list[int], int]:
    """The probed layers and steps of ``config`` and the U-Net calls per image."""
    from full_size import unet_on_meta

    from ldmprobe.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from diffusers import DDPMScheduler

    from ldmprobe.backbones import get_backbone
    from ldmprobe.backbones.layers import discover_layers, select_layers
    from ldmprobe.generation.generate import count_unet_calls
    from ldmprobe.models import make_scheduler

    generation = config["generation"]
    backbone = get_backbone(config["models"]["diffusion"]["backbone"])
    unet = unet_on_meta()
    _channels, latent_h, latent_w = backbone.latent_shape(
        unet, generation["height"], generation["width"]
    )
    layers = discover_layers(backbone, unet, latent_h, latent_w)
    layers = select_layers(layers, config["probe"]["layers"])
    # SD v1.x's training schedule; the workflow swaps in the configured scheduler the same way.
    base = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler = make_scheduler(generation["scheduler"], base.config)
    calls, _ = count_unet_calls(scheduler, generation["steps"])
    steps = config["probe"]["steps"]
    return layers, list(range(calls)) if steps == "all" else sorted(steps), calls


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    args.add_argument(
        "--images", type=int, default=617, help="the reference prompt tables: 246 + 371 rows"
    )
    options = args.parse_args(argv)
    config = load_config(options.config)
    layers, steps, calls = grid(config)
    blocks = sorted({layer.block for layer in layers})
    for unit, count in (("layer", len(layers)), ("block", len(blocks))):
        results = count_calls(steps, count, options.images, calls)
        results.update(units=count, probed_steps=len(steps), calls_per_image=calls)
        settings = {
            "config": options.config.removeprefix(f"{REPO}/"),
            "images": options.images,
            "unit": unit,
            "tiny": options.tiny,
        }
        record(options.results_dir, "unet_calls", "cpu", settings, results)


if __name__ == "__main__":
    main()
