"""Item 3, storage: bytes per image on disk vs raw fp16 for each ``generation.codec``.

Activations come from ``ldmprobe.generation.generate.generate`` (every self-attention layer, every
U-Net call) with the demo model, or the full-size SD v1.4 architecture with ``--full-size``.
Each image's store is written once without compression, then every chunk is written again
through ``ldmprobe.generation.storage.create_store`` with each codec (write and read speed timed per
codec). Random fp16 values of the same shapes are the incompressible reference. Random-weight
models' activations compress differently from trained ones: REFERENCE.md quotes 1.05-1.36x
for real SD v1.x activations.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import directory_bytes, parser, record

CODECS = [
    {"name": "none"},
    {"name": "zstd", "level": 3},
    {"name": "blosc-zstd", "level": 1},
    {"name": "blosc-zstd", "level": 3},
    {"name": "blosc-zstd", "level": 5},
    {"name": "blosc-lz4", "level": 5},
    {"name": "blosc-lz4hc", "level": 5},
    {"name": "blosc-zstd", "level": 3, "quantise": "int8-token"},
    {"name": "blosc-zstd", "level": 3, "quantise": "int8-channel"},
    {"name": "zstd", "level": 3, "quantise": "int8-token"},
]


def codec_label(codec: dict) -> str:
    """``name:level[:quantise]``, as ``--codecs`` takes them."""
    label = f"{codec['name']}:{codec.get('level', '')}".rstrip(":")
    return label + (f":{codec['quantise']}" if codec.get("quantise", "none") != "none" else "")


def generate_stores(work: Path, full_size: bool, device: str, images: int, size: int, steps: int):
    """Uncompressed stores of real generation runs; returns their paths."""
    from bench_dump import build_model

    from ldmprobe.generation.generate import GenerationSettings, generate
    from ldmprobe.models import ModelRef, load_diffusion_pipeline

    build_model(full_size, work / "model")
    dtype = "float16" if full_size else "float32"
    pipe = load_diffusion_pipeline(ModelRef("bench", str(work / "model")), "lms", dtype, device)
    settings = GenerationSettings(
        height=size, width=size, steps=steps, preview_kinds=(), codec={"name": "none"}
    )
    stores = []
    for index in range(images):
        out = work / "generation" / str(index)
        generate(
            pipe,
            ["a photo of a lemon on a wooden table", "a red car on a street"][index % 2],
            100 + index,
            settings,
            out / "image.png",
            out / "previews",
            out / "activations.zarr",
            out / "meta.json",
            {"model": "bench"},
        )
        stores.append(out / "activations.zarr")
    return stores


def activation_arrays(store) -> dict[str, np.ndarray]:
    from ldmprobe.generation.storage import open_store

    group = open_store(store)
    return {
        f"unet/cond/{layer['name']}": np.asarray(group[f"unet/cond/{layer['name']}"][:])
        for layer in group.attrs["layers"]
    }


def encode(arrays: dict[str, np.ndarray], path: Path, codec: dict) -> dict:
    """Write ``arrays`` chunk by chunk with ``codec`` (``write_chunk``, as generation does),
    then read every chunk back; the read values' RMS error relative to the values' RMS."""
    from ldmprobe.generation.storage import create_store, open_store, read_chunk, write_chunk

    start = time.perf_counter()
    group = create_store(path, {k: (v.shape, str(v.dtype)) for k, v in arrays.items()}, codec)
    for name, values in arrays.items():
        for step in range(values.shape[0]):
            write_chunk(group, name, step, values[step])
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    reopened = open_store(path)
    squared_error = squared = 0.0
    for name, values in arrays.items():
        for step in range(values.shape[0]):
            read = read_chunk(reopened, name, step, path).astype(np.float64)
            squared_error += float(((read - values[step]) ** 2).sum())
            squared += float((values[step].astype(np.float64) ** 2).sum())
    read_s = time.perf_counter() - start
    return {
        "bytes": directory_bytes(path),
        "write_s": write_s,
        "read_s": read_s,
        "relative_rms_error": (squared_error / squared) ** 0.5,
    }


def main(argv=None) -> None:
    args = parser(__doc__.split("\n\n")[0])
    args.add_argument("--full-size", action="store_true", help="SD v1.4 architecture")
    args.add_argument("--images", type=int, default=3)
    args.add_argument("--size", type=int, default=512, help="image size in px")
    args.add_argument("--steps", type=int, default=15)
    args.add_argument("--device", default="auto")
    args.add_argument(
        "--codecs",
        nargs="+",
        help=f"only these (default: all of {[codec_label(c) for c in CODECS]})",
    )
    options = args.parse_args(argv)
    if options.tiny:
        options.images, options.size, options.steps = 1, 64, 2
    codecs = CODECS[:2] if options.tiny else CODECS
    if options.codecs:
        codecs = [codec for codec in CODECS if codec_label(codec) in options.codecs]

    from ldmprobe.generation.storage import LAYOUTS
    from ldmprobe.jobs import setup_job
    from ldmprobe.models import resolve_device

    setup_job(None)
    import logging

    logging.getLogger("ldmprobe").setLevel(logging.WARNING)
    device = resolve_device(options.device)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        work = Path(tmp)
        stores = generate_stores(
            work, options.full_size, device, options.images, options.size, options.steps
        )
        per_image = [activation_arrays(store) for store in stores]
        generator = np.random.default_rng(0)
        random = {
            name: generator.standard_normal(values.shape, dtype=np.float32).astype(np.float16)
            for name, values in per_image[0].items()
        }
        raw = sum(values.nbytes for values in per_image[0].values())
        data = {"activations": per_image, "random fp16": [random]}
        for codec in codecs:
            for kind, sets in data.items():
                runs = [
                    encode(arrays, work / "encoded" / f"{index}.zarr", codec)
                    for index, arrays in enumerate(sets)
                ]
                stored = sum(run["bytes"] for run in runs) / len(runs)
                megabytes = raw * len(runs) / 1e6
                results = {
                    "raw_fp16_bytes_per_image": raw,
                    "stored_bytes_per_image": stored,
                    "compression_ratio": raw / stored,
                    "write_mb_per_s": megabytes / sum(run["write_s"] for run in runs),
                    "read_mb_per_s": megabytes / sum(run["read_s"] for run in runs),
                    "relative_rms_error": max(run["relative_rms_error"] for run in runs),
                }
                config = {
                    "model": "sd-v1.4 full size" if options.full_size else "demo",
                    "data": kind,
                    "codec": codec,
                    # The 8-bit values' order in the chunk (ldmprobe.generation.storage.LAYOUTS).
                    **({"layout": LAYOUTS[codec["quantise"]]} if codec.get("quantise") else {}),
                    "size": options.size,
                    "steps": options.steps,
                    "images": len(runs),
                    "tiny": options.tiny,
                }
                record(options.results_dir, "storage", device, config, results)
                shutil.rmtree(work / "encoded")


if __name__ == "__main__":
    main()
