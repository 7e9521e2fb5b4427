"""Item 1, dump overhead: generation with every self-attention layer hooked and written to
Zarr vs the plain diffusers pipeline call, in one process, same pipeline, same prompts.

Modes, interleaved per repetition (the order rotates) and compared by their medians:

- ``plain``: ``pipe(prompt, latents=...)``, no hooks (decodes the final image too);
- ``dump``: ``ldmprobe.generation.generate.generate`` without previews: hooks, Zarr writes through
  the background writer thread, latents, image and meta files;
- ``dump_sync``: the same with synchronous writes (``write_queue=0``): the before of the
  writer thread;
- ``job``: what the workflow's generate job does per image: ``dump`` plus the x0 preview of
  every step (one VAE decode per U-Net call).

CPU: the demo models. GPU: ``--full-size`` builds the SD v1.4 architecture (random weights)
and runs it in fp16 at 512 px, 15 steps.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import directory_bytes, median, parser, record, timed

PROMPTS = [
    "a photo of a lemon on a wooden table",
    "a red sports car parked on a street, golden hour",
]
MODES = ("plain", "dump", "dump_sync", "job")


def build_model(full_size: bool, out_dir: Path) -> float:
    start = time.perf_counter()
    if full_size:
        from full_size import build_full_size_sd

        build_full_size_sd(out_dir)
    else:
        from ldmprobe.models.demo_models import build_demo_model

        build_demo_model("stable-diffusion", out_dir)
    return time.perf_counter() - start


def run_mode(pipe, mode: str, prompt: str, seed: int, size: int, steps: int, out: Path):
    import torch

    from ldmprobe.generation.generate import GenerationSettings, generate, initial_noise

    if mode == "plain":
        with torch.no_grad():
            pipe(
                prompt,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=7.5,
                latents=initial_noise(seed, (4, size // 8, size // 8)).to(
                    pipe.device, pipe.unet.dtype
                ),
            )
        return
    settings = GenerationSettings(
        height=size,
        width=size,
        steps=steps,
        preview_kinds=("x0",) if mode == "job" else (),
        write_queue=0 if mode == "dump_sync" else 64,
    )
    generate(
        pipe,
        prompt,
        seed,
        settings,
        out / "image.png",
        out / "previews",
        out / "activations.zarr",
        out / "meta.json",
        {"model": "bench"},
    )


def measure_size(
    pipe, device: str, size: int, steps: int, reps: int, work: Path, warm_up: bool
) -> dict:
    times = {mode: [] for mode in MODES}
    # CPU seconds of this process (all its threads): on a loaded shared machine they vary far
    # less than wall seconds; the writer thread's overlap shows only in wall seconds.
    cpu_times = {mode: [] for mode in MODES}
    store_bytes = None
    # Repetition 0 warms up (first calls allocate buffers and pick kernels) and is not kept.
    jobs = [(mode, 0) for mode in MODES] if warm_up else []
    for rep in range(reps):
        rotated = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        jobs.extend((mode, rep + 1) for mode in rotated)
    for mode, rep in jobs:
        out = Path(tempfile.mkdtemp(dir=work))
        prompt = PROMPTS[rep % len(PROMPTS)]
        call = functools.partial(run_mode, pipe, mode, prompt, 1000 + rep, size, steps, out)
        cpu_start = time.process_time()
        seconds = timed(call, device)
        cpu_seconds = time.process_time() - cpu_start
        if mode == "dump" and store_bytes is None:
            store_bytes = directory_bytes(out / "activations.zarr")
        shutil.rmtree(out)
        if rep > 0:
            times[mode].append(round(seconds, 4))
            cpu_times[mode].append(round(cpu_seconds, 4))
    medians = {mode: median(values) for mode, values in times.items()}
    cpu_medians = {mode: median(values) for mode, values in cpu_times.items()}
    return {
        "seconds": times,
        "median_s": medians,
        "cpu_seconds": cpu_times,
        "cpu_ratio_dump": cpu_medians["dump"] / cpu_medians["plain"],
        "cpu_ratio_dump_sync": cpu_medians["dump_sync"] / cpu_medians["plain"],
        "cpu_ratio_job": cpu_medians["job"] / cpu_medians["plain"],
        "ratio_dump": medians["dump"] / medians["plain"],
        "ratio_dump_sync": medians["dump_sync"] / medians["plain"],
        "ratio_job": medians["job"] / medians["plain"],
        "images_per_s_dump": 1 / medians["dump"],
        "images_per_s_job": 1 / medians["job"],
        "store_bytes": store_bytes,
    }


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--full-size", action="store_true", help="SD v1.4 architecture")
    args.add_argument("--sizes", type=int, nargs="+", help="image sizes in px")
    args.add_argument("--steps", type=int, default=15)
    args.add_argument("--reps", type=int, default=5, help="timed repetitions per mode")
    args.add_argument("--device", default="auto")
    args.add_argument("--dtype", default=None, help="default: float16 full-size, else float32")
    options = args.parse_args(argv)
    sizes = options.sizes or ([64] if options.tiny else [512] if options.full_size else [128, 256])
    steps, reps = (2, 1) if options.tiny else (options.steps, options.reps)
    dtype = options.dtype or ("float16" if options.full_size else "float32")

    from ldmprobe.jobs import setup_job
    from ldmprobe.models import ModelRef, load_diffusion_pipeline, resolve_device

    setup_job(None)
    import logging

    logging.getLogger("ldmprobe").setLevel(logging.WARNING)
    device = resolve_device(options.device)
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as tmp:
        work = Path(tmp)
        build_s = build_model(options.full_size, work / "model")
        start = time.perf_counter()
        pipe = load_diffusion_pipeline(ModelRef("bench", str(work / "model")), "lms", dtype, device)
        load_s = time.perf_counter() - start
        for size in sizes:
            results = measure_size(pipe, device, size, steps, reps, work, not options.tiny)
            results.update(build_s=round(build_s, 2), pipeline_load_s=round(load_s, 2))
            config = {
                "model": "sd-v1.4 full size" if options.full_size else "demo",
                "unet_dtype": str(pipe.unet.dtype).removeprefix("torch."),
                "size": size,
                "steps": steps,
                "reps": reps,
                "tiny": options.tiny,
            }
            record(options.results_dir, "dump_overhead", device, config, results)


if __name__ == "__main__":
    main()
