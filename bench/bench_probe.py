"""Item 2, a probe-grid cell vs its honest floor: the probe job (all tasks) vs the larger of
reading the cell's activations from the image stores once and the epochs' matrix products
alone, and the peak memory of each vs the cell's fp16 bytes.

The products floor: the train split as float32 in memory, every epoch's batches (contiguous
slices, no gather) through the stacked heads of all tasks (4 outputs), forward and the
weight gradient, nothing else: what any gradient-trained probe must compute.

One cell per layer size. Two kinds of stores:

- ``synthetic``: the real SD v1.x layer sizes (64x64x320, 32x32x640, 16x16x1280, 8x8x1280),
  random fp16 values written through ``ldmprobe.generation.storage.create_store``;
- ``demo``: stores written by ``ldmprobe.generation.generate.generate`` with the demo model at
  512 px (the real token counts, the demo's small channel widths).

Labels are written by ``ldmprobe.labels.label_image`` (final image and every step's preview,
as the label jobs write them) from smooth random maps. Every measurement runs in a fresh
process (peak RSS); the read floor is measured before and after the probe job, warm cache.
The probe job is ``ldmprobe.jobs.probe`` with one thread, as the workflow runs it.
"""

from __future__ import annotations

import concurrent.futures
import cProfile
import io
import multiprocessing
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import median, parser, peak_rss_bytes, record, rss_bytes, synchronise

# (layer name, token grid side, channels) of SD v1.x at 512 px, one per layer size.
SD_SIZES = [("down0.0", 64, 320), ("down1.0", 32, 640), ("down2.0", 16, 1280), ("mid.0", 8, 1280)]
TINY_SIZES = [("mid.0", 4, 16)]
# The reference study's probe settings (config/config.yaml); saliency and shading as depth.
PROBE_DEFAULTS = {"epochs": 30, "batch_images": 4, "lr": 0.001, "seed": 0}
TASK_SETTINGS = {
    "saliency": PROBE_DEFAULTS,
    "depth": {
        **PROBE_DEFAULTS,
        "target_scaling": "fixed",
        "target_mean": 15.740597,
        "target_std": 9.281932,
    },
    "shading": PROBE_DEFAULTS,
}


# 60/10/30 train/val/test, interleaved so that any number of images has all three.
SPLITS = ["train"] * 6 + ["val"] + ["test"] * 3


class SmoothRandomLabeler:
    """Smooth random maps at each image's size: the label files' content, not a model."""

    def __init__(self, seed: int, offset: float):
        self.generator = np.random.default_rng(seed)
        self.offset = offset
        # What label_image reads from every labeler: its options in effect and provenance.
        self.settings: dict = {}
        self.info = {"labeler": "smooth random maps", "seed": seed}

    def predict(self, images: list) -> np.ndarray:
        import torch

        height, width = images[0].height, images[0].width
        coarse = torch.from_numpy(self.generator.standard_normal((len(images), 1, 8, 8)))
        maps = torch.nn.functional.interpolate(
            coarse.float(), size=(height, width), mode="bicubic", align_corners=False
        )
        return (maps[:, 0] + self.offset).numpy()


def write_labels(work: Path, n_images: int, label_size: int, previews: int) -> dict:
    """One binary label file (saliency) and one continuous (depth, shading) per image."""
    from PIL import Image

    from ldmprobe.core.tasks import TASKS
    from ldmprobe.labels import label_image

    image = work / "image.png"
    Image.new("RGB", (label_size, label_size), (128, 128, 128)).save(image)
    paths = {"saliency": [], "continuous": []}
    for index in range(n_images):
        for kind, task, offset in (("saliency", "saliency", 0.0), ("continuous", "depth", 15.7)):
            out = work / "labels" / kind / f"{index:05d}.npz"
            label_image(
                SmoothRandomLabeler(index, offset),
                TASKS[task],
                {},
                image,
                [image] * previews,
                out,
                {"labeler": "bench"},
                batch_size=previews or 1,
            )
            paths[kind].append(str(out))
    return {
        "saliency": paths["saliency"],
        "depth": paths["continuous"],
        "shading": paths["continuous"],
    }


def write_synthetic_stores(work: Path, n_images: int, sizes, codec: dict) -> list[str]:
    from ldmprobe.backbones.layers import Layer
    from ldmprobe.core.io import atomic_directory
    from ldmprobe.generation.storage import array_path, create_store

    layers = [
        Layer(name, name, name.split(".")[0], 0, order, side, side, channels).to_dict()
        for order, (name, side, channels) in enumerate(sizes)
    ]
    generator = np.random.default_rng(0)
    paths = []
    for index in range(n_images):
        path = work / "stores" / f"{index:05d}.zarr"
        with atomic_directory(path) as tmp:
            arrays = {
                array_path("unet", "cond", name): ((1, side * side, channels), "float16")
                for name, side, channels in sizes
            }
            group = create_store(tmp, arrays, codec)
            for name, side, channels in sizes:
                values = generator.standard_normal((side * side, channels), dtype=np.float32)
                group[array_path("unet", "cond", name)][0] = values.astype(np.float16)
            group.attrs.update({"steps": 1, "layers": layers})
        paths.append(str(path))
    return paths


def write_demo_stores(work: Path, n_images: int, size: int, steps: int, codec: dict):
    from ldmprobe.generation.generate import GenerationSettings, generate
    from ldmprobe.generation.storage import open_store
    from ldmprobe.models import ModelRef, load_diffusion_pipeline
    from ldmprobe.models.demo_models import build_demo_model

    build_demo_model("stable-diffusion", work / "model")
    pipe = load_diffusion_pipeline(ModelRef("bench", str(work / "model")), "lms", "float32", "cpu")
    settings = GenerationSettings(
        height=size, width=size, steps=steps, preview_kinds=(), codec=codec
    )
    paths = []
    for index in range(n_images):
        out = work / "generation" / f"{index:05d}"
        generate(
            pipe,
            f"a photo of object number {index} on a table",
            index,
            settings,
            out / "image.png",
            out / "previews",
            out / "activations.zarr",
            out / "meta.json",
            {"model": "bench"},
        )
        paths.append(str(out / "activations.zarr"))
    layers = open_store(paths[0]).attrs["layers"]
    return paths, {layer["name"]: layer for layer in layers}


def write_manifest(work: Path, stores: list[str], labels: dict) -> Path:
    import pandas as pd

    from ldmprobe.probing.dataset import build_manifest

    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{index:05d}" for index in range(len(stores))],
            "seed": list(range(len(stores))),
            "split": [SPLITS[index % 10] for index in range(len(stores))],
        }
    )
    paths = {"store": stores, **{f"label_{task}": files for task, files in labels.items()}}
    path = work / "dataset.csv"
    build_manifest(prompts, paths, str(path))
    return path


# Outputs of the task heads trained together: saliency's two logits, depth's and shading's one.
HEAD_OUTPUTS = 4


def matrix_products(train_x, epochs: int, batch_images: int) -> None:
    """The epochs' forward and weight-gradient products of the stacked heads, on ``train_x``."""
    import torch

    weight = torch.zeros(HEAD_OUTPUTS, train_x.shape[-1], device=train_x.device)
    for _ in range(epochs):
        for start in range(0, train_x.shape[0], batch_images):
            batch = train_x[start : start + batch_images].reshape(-1, train_x.shape[-1])
            output = batch @ weight.T
            (output.T @ batch).sum()


def worker(
    kind: str,
    manifest: str,
    layer: str,
    out_dir: str,
    epochs: int,
    profile: bool,
    device: str = "cpu",
):
    """One measurement in a fresh process: the cell's read alone, its matrix products alone,
    or the whole probe job."""
    import torch

    from ldmprobe.jobs import probe
    from ldmprobe.models import resolve_device
    from ldmprobe.probing.cell import Cell, load_activations
    from ldmprobe.probing.dataset import read_manifest

    torch.set_num_threads(1)
    settings = {task: {**values, "epochs": epochs} for task, values in TASK_SETTINGS.items()}
    baseline = rss_bytes()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    if kind == "read":
        load_activations(read_manifest(manifest), Cell("unet", "cond", layer, 0))
    elif kind == "products":
        table = read_manifest(manifest)
        rows = np.flatnonzero(table["split"].to_numpy() == "train")
        train_x, _ = load_activations(table, Cell("unet", "cond", layer, 0), rows, torch.float32)
        # On a GPU the products run there, on the tensor moved there once (as the probe job).
        train_x = train_x.to(resolve_device(device))
        synchronise(str(train_x.device))
        baseline, start = rss_bytes(), time.perf_counter()
        matrix_products(train_x, epochs, PROBE_DEFAULTS["batch_images"])
        synchronise(str(train_x.device))
    else:
        probe(
            manifest,
            "unet",
            "cond",
            layer,
            0,
            settings,
            f"{out_dir}/probe.safetensors",
            f"{out_dir}/metrics.csv",
            device,
        )
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - start
    result = {"wall_s": wall, "baseline_rss": baseline, "peak_rss": peak_rss_bytes()}
    if profiler:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        # The package's own functions by cumulative time (where in the job), then the
        # functions with the most own time (what it spends it on).
        stats.sort_stats("cumulative").print_stats("ldmprobe", 15)
        stats.sort_stats("tottime").print_stats(12)
        result["profile_top"] = [line for line in text.getvalue().splitlines() if line.strip()]
    return result


def compare_huber(manifest: Path, layer: str, epochs: int, reps: int) -> dict:
    """The cell's training alone (``train_probes``, all tasks, data in memory), with Huber at
    the label resolution (the reference's form) and exact at the token grid (sorted blocks),
    interleaved in one process; the cross-entropy task is the same in both."""
    import torch

    from ldmprobe.core.tasks import TASKS
    from ldmprobe.labels import load_label
    from ldmprobe.probing.cell import Cell, load_activations
    from ldmprobe.probing.dataset import read_manifest
    from ldmprobe.probing.probes import ProbeSettings, ProbeTask, train_probes

    torch.set_num_threads(1)
    table = read_manifest(str(manifest))
    split = table["split"].to_numpy()
    rows = {part: np.flatnonzero(split == part) for part in ("train", "val")}
    cell = Cell("unet", "cond", layer, 0)
    train_x, (height, width) = load_activations(table, cell, rows["train"], torch.float32)
    val_x, _ = load_activations(table, cell, rows["val"])

    def labels(task, part):
        paths = table[f"label_{task}"].to_numpy()[rows[part]]
        return torch.from_numpy(
            np.stack([load_label(p, keys=("target",))["target"] for p in paths])
        )

    seconds = {"label": [], "native": []}
    for _ in range(reps):
        for resolution in seconds:
            tasks = {
                task: ProbeTask(
                    TASKS[task].kind,
                    ProbeSettings(**{**values, "epochs": epochs, "loss_resolution": resolution}),
                    labels(task, "train"),
                    labels(task, "val"),
                )
                for task, values in TASK_SETTINGS.items()
            }
            start = time.perf_counter()
            train_probes(tasks, train_x, val_x, height, width)
            seconds[resolution].append(round(time.perf_counter() - start, 3))
    return {
        "label_s": seconds["label"],
        "native_s": seconds["native"],
        "speedup": median(seconds["label"]) / median(seconds["native"]),
    }


def in_fresh_process(*args):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(worker, *args).result()


def measure_cell(
    manifest: Path,
    layer: str,
    work: Path,
    epochs: int,
    profile: bool,
    read_again: bool,
    device: str = "cpu",
) -> dict:
    """Read, products, train (and read and products again), interleaved, each in a fresh
    process; the floor is the larger of the read's and the products' medians."""
    out = work / "probe" / layer
    out.mkdir(parents=True, exist_ok=True)
    args = (str(manifest), layer, str(out), epochs)
    reads = [in_fresh_process("read", *args, False)]
    products = [in_fresh_process("products", *args, False, device)]
    train = in_fresh_process("train", *args, False, device)
    if read_again:
        reads.append(in_fresh_process("read", *args, False))
        products.append(in_fresh_process("products", *args, False, device))
    results = {
        "device": device,
        "read_s": [round(r["wall_s"], 3) for r in reads],
        "products_s": [round(r["wall_s"], 3) for r in products],
        "train_s": round(train["wall_s"], 3),
        "read_peak_rss_bytes": max(r["peak_rss"] - r["baseline_rss"] for r in reads),
        "train_peak_rss_bytes": train["peak_rss"] - train["baseline_rss"],
    }
    results["floor_s"] = max(median(results["read_s"]), median(results["products_s"]))
    results["time_ratio"] = results["train_s"] / median(results["read_s"])
    results["floor_ratio"] = results["train_s"] / results["floor_s"]
    if profile:
        profiled = in_fresh_process("train", *args, True, device)
        results["profile_top"] = profiled["profile_top"]
    return results


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--images", type=int, default=48)
    args.add_argument("--sources", nargs="+", default=["synthetic", "demo"])
    args.add_argument("--label-size", type=int, default=512, help="label resolution (px)")
    args.add_argument("--previews", type=int, default=15, help="preview labels per file")
    args.add_argument("--epochs", type=int, default=PROBE_DEFAULTS["epochs"])
    args.add_argument("--profile", action="store_true", help="add a cProfile of each job")
    args.add_argument(
        "--layers", nargs="+", help=f"only these cells (default: {[n for n, *_ in SD_SIZES]})"
    )
    args.add_argument("--work", type=Path, help="keep stores here (default: a temp dir)")
    args.add_argument("--device", default="cpu", help="probe.device of the probe job")
    args.add_argument(
        "--compare-huber",
        action="store_true",
        help="only compare training with Huber at the label resolution and at the token grid",
    )
    options = args.parse_args(argv)
    if options.tiny:
        options.images, options.label_size, options.previews, options.epochs = 10, 64, 2, 2
        options.sources = ["synthetic"]
    sizes = TINY_SIZES if options.tiny else SD_SIZES
    if options.layers:
        sizes = [size for size in sizes if size[0] in options.layers]
    codec = {"name": "blosc-zstd", "level": 3}

    from ldmprobe.jobs import setup_job

    setup_job(None)
    import logging

    logging.getLogger("ldmprobe").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-probe-", dir=options.work) as tmp:
        work = Path(tmp)
        labels = write_labels(work, options.images, options.label_size, options.previews)
        for source in options.sources:
            source_dir = work / source
            if source == "synthetic":
                stores = write_synthetic_stores(source_dir, options.images, sizes, codec)
                cells = [(name, side, side, channels) for name, side, channels in sizes]
            else:
                stores, layers = write_demo_stores(
                    source_dir, options.images, options.label_size, 2, codec
                )
                cells = [
                    (name, layers[name]["height"], layers[name]["width"], layers[name]["channels"])
                    for name, _side, _channels in sizes
                ]
            manifest = write_manifest(source_dir, stores, labels)
            for name, height, width, channels in cells:
                if options.compare_huber:
                    config = {
                        "source": source,
                        "layer": name,
                        "tokens": height * width,
                        "channels": channels,
                        "images": options.images,
                        "epochs": options.epochs,
                        "label_size": options.label_size,
                        "tiny": options.tiny,
                    }
                    results = compare_huber(
                        manifest, name, options.epochs, 1 if options.tiny else 2
                    )
                    record(options.results_dir, "probe_huber", "cpu", config, results)
                    continue
                results = measure_cell(
                    manifest,
                    name,
                    source_dir,
                    options.epochs,
                    options.profile,
                    not options.tiny,
                    options.device,
                )
                fp16 = options.images * height * width * channels * 2
                results.update(
                    cell_fp16_bytes=fp16,
                    train_memory_ratio=results["train_peak_rss_bytes"] / fp16,
                    read_memory_ratio=results["read_peak_rss_bytes"] / fp16,
                )
                config = {
                    "source": source,
                    "layer": name,
                    "tokens": height * width,
                    "channels": channels,
                    "images": options.images,
                    "tasks": list(TASK_SETTINGS),
                    "epochs": options.epochs,
                    "label_size": options.label_size,
                    "previews": options.previews,
                    "codec": codec,
                    "tiny": options.tiny,
                }
                device = "cpu" if options.device == "cpu" else "cuda"
                record(options.results_dir, "probe_cell", device, config, results)


if __name__ == "__main__":
    main()
