"""What one intervention edit costs: denoiser calls, optimiser steps and wall time.

Two measurements, each a record in ``bench/results/intervention.jsonl``:

- ``generation``: the demo's random-weight SD model (the real block types, tiny widths) at the
  demo's size, one edited generation with a task's default plan (saliency: the decoder layers
  at steps 0-4; depth: every layer at steps 0-2; 128 Adam iterations per site) against the same
  generation unedited. Probes are random: the optimiser's cost does not depend on its values.
- ``sites``: the optimiser alone at SD v1.x's full-size token grids and channels at 512 px (the
  layer sizes come from the full-size U-Net on the meta device), per layer size, and summed
  over a task's plan: what the edit adds to a real SD 1.4 generation on this machine.
"""

from __future__ import annotations

import time

import numpy as np
from benchlib import parser, record

from ldmprobe.generation.reads import TASK_DEFAULTS


def random_probes(layers, steps, kind):
    import torch

    from ldmprobe.intervention.optimise import EditProbe
    from ldmprobe.probing.probes import LinearProbe, ProbeSettings

    torch.manual_seed(0)
    return {
        (layer.name, step): EditProbe(
            LinearProbe(layer.channels, kind), ProbeSettings(), layer.height, layer.width
        )
        for layer in layers
        for step in steps
    }


def plan(task: str, layers, calls: int):
    from ldmprobe.intervention.plan import edited_cells

    section = {"task": task, "layers": None, "steps": None}
    names, steps = edited_cells(section, layers, calls)
    return [layer for layer in layers if layer.name in names], steps


def target(kind: str, size: int) -> np.ndarray:
    grid = np.indices((size, size)).sum(0)
    return (grid > size).astype(np.float32) if kind == "binary" else grid / size


def bench_generation(task: str, size: int, iterations: int, results_dir, tiny: bool) -> None:
    import tempfile
    from pathlib import Path

    import torch

    from ldmprobe.backbones import backbone_of
    from ldmprobe.backbones.layers import discover_layers
    from ldmprobe.core.tasks import TASKS
    from ldmprobe.intervention.edit import ProbeEdit, generate_edited
    from ldmprobe.intervention.optimise import EditSettings
    from ldmprobe.models import ModelRef, load_diffusion_pipeline
    from ldmprobe.models.demo_models import build_demo_model

    torch.set_num_threads(1)
    kind = TASKS[task].kind
    generation = {"height": size, "width": size, "steps": 15, "guidance_scale": 7.5}
    with tempfile.TemporaryDirectory() as folder:
        build_demo_model("stable-diffusion", Path(folder) / "sd", seed=0)
        ref = ModelRef("models.diffusion", str(Path(folder) / "sd"))
        pipe = load_diffusion_pipeline(ref, "lms", "float32", "cpu")
    layers = discover_layers(backbone_of(pipe), pipe.unet, size // 8, size // 8)
    edited_layers, steps = plan(task, layers, generation["steps"])
    probes = random_probes(edited_layers, steps, kind)
    settings = EditSettings(iterations=iterations)
    map_ = target(kind, size)

    def run(edit):
        started = time.perf_counter()
        result = generate_edited(pipe, "a red cube on a table", 0, generation, layers, edit)
        return time.perf_counter() - started, result

    run(None)  # warm-up
    plain_s, plain = run(None)
    edit = ProbeEdit(probes, lambda probe: map_, settings)
    edited_s, edited = run(edit)
    results = {
        "denoiser_calls": edited.calls,
        "extra_denoiser_calls": edited.calls - plain.calls,
        "edited_sites": len(edit.sites),
        "optimiser_steps": len(edit.sites) * iterations,
        "unedited_s": plain_s,
        "edited_s": edited_s,
        "edit_overhead_s": edited_s - plain_s,
        "per_optimiser_step_ms": 1000 * (edited_s - plain_s) / (len(edit.sites) * iterations),
    }
    settings_record = {"task": task, "size": size, "iterations": iterations, "tiny": tiny}
    record(results_dir, "intervention", "cpu", {"part": "generation", **settings_record}, results)


def bench_sites(task: str, iterations: int, results_dir, tiny: bool) -> None:
    import torch
    from full_size import unet_on_meta

    from ldmprobe.backbones import DEFAULT_BACKBONE, get_backbone
    from ldmprobe.backbones.layers import discover_layers
    from ldmprobe.core.tasks import TASKS
    from ldmprobe.intervention.optimise import EditSettings, optimise_activation

    torch.set_num_threads(1)
    kind = TASKS[task].kind
    size = 512
    layers = discover_layers(get_backbone(DEFAULT_BACKBONE), unet_on_meta(), size // 8, size // 8)
    edited_layers, steps = plan(task, layers, 15)
    map_ = torch.from_numpy(target(kind, size))
    seconds = {}
    for layer in edited_layers:
        shape = (layer.height, layer.width, layer.channels)
        if shape in seconds:
            continue
        (probe,) = random_probes([layer], [0], kind).values()
        activation = torch.randn(layer.height * layer.width, layer.channels)
        started = time.perf_counter()
        optimise_activation(probe, activation, map_, EditSettings(iterations=iterations))
        seconds[shape] = time.perf_counter() - started
    per_edit = sum(
        seconds[(layer.height, layer.width, layer.channels)] for layer in edited_layers
    ) * len(steps)
    results = {
        "per_site_s": {f"{h}x{w}x{c}": s for (h, w, c), s in seconds.items()},
        "edited_sites": len(edited_layers) * len(steps),
        "optimiser_steps": len(edited_layers) * len(steps) * iterations,
        "optimiser_s_per_edit": per_edit,
    }
    settings_record = {"task": task, "size": size, "iterations": iterations, "tiny": tiny}
    record(results_dir, "intervention", "cpu", {"part": "sites", **settings_record}, results)


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--tasks", nargs="+", default=list(TASK_DEFAULTS))
    args.add_argument("--size", type=int, default=128, help="image size of the generation part")
    args.add_argument("--iterations", type=int, default=128)
    args.add_argument("--parts", nargs="+", default=["generation", "sites"])
    options = args.parse_args(argv)
    if options.tiny:
        options.size, options.iterations = 64, 2
    for task in options.tasks:
        if "generation" in options.parts:
            bench_generation(
                task, options.size, options.iterations, options.results_dir, options.tiny
            )
        if "sites" in options.parts and not options.tiny:
            bench_sites(task, options.iterations, options.results_dir, options.tiny)


if __name__ == "__main__":
    main()
