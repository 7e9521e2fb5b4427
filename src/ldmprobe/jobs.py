"""One function per workflow job. Scripts unpack ``snakemake.*`` and call these.

Each function takes plain values (paths, config sections) so it runs and is tested without
Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from .core.io import write_json

log = logging.getLogger("ldmprobe")


def setup_job(log_path: str | None, threads: int | None = None) -> None:
    """Set up a job's process: its log lines, Python warnings and uncaught errors go to its
    Snakemake log file, and its thread pools get the job's thread budget.

    ``threads``: the job's thread budget (Snakemake's ``threads``), given to the OpenMP and
    MKL pools that torch and onnxruntime size themselves by, as Snakemake does for shell jobs;
    without it each of ``--cores`` parallel jobs would start one thread per core.
    """
    if threads is not None:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)

    def log_failure(kind, error, trace):
        # The job's log is where a user looks first, so the error that ended the job goes there
        # too, its message on the first line (e.g. a corrupt store and the rule that makes it).
        log.critical("%s: %s", kind.__name__, error, exc_info=(kind, error, trace))

    sys.excepthook = log_failure
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def build_demo_model(kind: str, out_dir: str, seed: int) -> None:
    from .models.demo_models import build_demo_model as build

    build(kind, out_dir, seed)
    log.info("built random-weight %s model in %s", kind, out_dir)


def layer_table(model: dict, allow_download: bool, generation: dict, out_path: str) -> None:
    """The denoiser's probed layers and its calls in the configured schedule."""
    from .backbones import get_backbone
    from .backbones.layers import discover_layers
    from .generation.generate import count_unet_calls
    from .models import (
        ModelRef,
        load_denoiser_on_meta,
        load_scheduler_config,
        make_scheduler,
        vae_scale_factor,
    )

    ref = ModelRef.from_config("models.diffusion", model)
    backbone = get_backbone(model["backbone"])
    denoiser = load_denoiser_on_meta(ref, allow_download, backbone.name)
    _channels, latent_h, latent_w = backbone.latent_shape(
        denoiser, generation["height"], generation["width"], vae_scale_factor(ref, allow_download)
    )
    layers = discover_layers(backbone, denoiser, latent_h, latent_w)
    scheduler = make_scheduler(generation["scheduler"], load_scheduler_config(ref, allow_download))
    n_calls, timesteps = count_unet_calls(scheduler, generation["steps"])
    log.info("%d self-attention layers, %d U-Net calls", len(layers), n_calls)
    write_json(
        out_path,
        {
            "model": ref.describe(),
            "layers": [layer.to_dict() for layer in layers],
            "unet_calls": n_calls,
            "timesteps": timesteps,
        },
    )


def generate(
    model: dict,
    allow_download: bool,
    generation: dict,
    images: list[dict],
    capture_activations: bool = True,
    controls: dict | None = None,
    prompt_encoding: str | None = None,
    store: dict | None = None,
) -> None:
    """``images``: one dict per image with its ``prompt``, ``seed`` and output paths ``image``,
    ``previews``, ``store`` and ``meta``; the pipeline is loaded once for all of them.

    ``capture_activations=False`` keeps only the latents in ``store`` (for unprobed images).
    ``controls``: the enabled parts of the ``controls`` config section, the permuted U-Net's
    layers resolved (null stands for ``probe.layers``). ``prompt_encoding`` (how the prompt
    table was decoded) goes into the image's metadata. ``store``: per source role, the layers and
    steps to write (``reads.store_plan`` as dicts); None writes every layer at every step.
    """
    from .backbones import get_backbone
    from .generation.generate import GenerationSettings, permuted_denoiser
    from .generation.generate import generate as run
    from .models import ModelRef, load_diffusion_pipeline, resolve_device

    ref = ModelRef.from_config("models.diffusion", model)
    device = resolve_device(generation["device"])
    started = time.perf_counter()
    log.info("loading pipeline %s on %s", ref.describe(), device)
    pipe = load_diffusion_pipeline(
        ref, generation["scheduler"], generation["dtype"], device, allow_download, model["backbone"]
    )
    log.info("pipeline loaded in %.1f s", time.perf_counter() - started)
    if not capture_activations:
        halves = ()
    elif generation["cfg_half"] == "both":
        halves = ("uncond", "cond")
    else:
        halves = (generation["cfg_half"],)
    settings = GenerationSettings(
        height=generation["height"],
        width=generation["width"],
        steps=generation["steps"],
        guidance_scale=generation["guidance_scale"],
        halves=halves,
        preview_kinds=tuple(generation["previews"]),
        codec=generation["codec"],
        start=None if generation["start"]["kind"] == "noise" else generation["start"],
        store=store,
        **control_settings(controls or {}),
    )
    permuted = None
    if settings.permuted_layers is not None:
        backbone = get_backbone(model["backbone"])
        permuted = permuted_denoiser(backbone.denoiser(pipe), settings.permutation_seed)
    provenance = {"model": ref.id, "revision": ref.revision}
    if prompt_encoding is not None:
        provenance["prompt_encoding"] = prompt_encoding
    for number, image in enumerate(images, start=1):
        log.info("image %d/%d: seed %d, %s", number, len(images), image["seed"], image["image"])
        started = time.perf_counter()
        run(
            pipe,
            image["prompt"],
            int(image["seed"]),
            settings,
            Path(image["image"]),
            Path(image["previews"]),
            Path(image["store"]),
            Path(image["meta"]),
            provenance,
            permuted,
        )
        log.info(
            "image %d/%d generated in %.1f s", number, len(images), time.perf_counter() - started
        )


def control_settings(controls: dict) -> dict:
    """GenerationSettings fields of the ``controls`` config section (absent: all off)."""
    from .generation.sources import PERMUTED, VAE

    settings = {}
    permuted = controls.get(PERMUTED.control, {})
    if permuted.get("enabled"):
        layers = permuted.get("layers") or "all"
        settings["permuted_layers"] = ("*",) if layers == "all" else tuple(layers)
        settings["permutation_seed"] = permuted.get("seed", 0)
    vae = controls.get(VAE.control, {})
    if vae.get("enabled"):
        settings["vae_latent"] = vae.get("latent", "x0")
    return settings


def label(
    task: str,
    task_config: dict,
    allow_download: bool,
    device: str,
    batch_size: int,
    images: list[dict],
) -> None:
    """``images``: one dict per image with its ``image``, ``previews`` and ``out`` paths; the
    labeler is loaded once for all of them, and the previews' own labeler (``previews`` of the
    task's config) too when it has one. An image's ``meta`` (its generation's ``meta.json``,
    given when a labeler reads it: ``Labeler.reads_record``) is read and handed to the
    labelers as the image's record, with the row's ``prompt_id`` when the entry has one."""
    from .core.tasks import TASKS
    from .labels import build_labeler, label_image, label_model_ref
    from .models import resolve_device

    def load(section: dict, ref) -> tuple:
        started = time.perf_counter()
        options = section.get("options", {})
        labeler = build_labeler(
            section["labeler"], ref, resolve_device(device), allow_download, options
        )
        log.info(
            "%s labeler %s loaded in %.1f s", task, ref.describe(), time.perf_counter() - started
        )
        provenance = {
            "labeler": section["labeler"],
            "model": ref.id,
            "revision": ref.revision,
            # Where it ran: left out of the rule's params (rules/common.smk, `untracked`).
            "device": labeler.device,
        }
        return labeler, options, provenance

    labeler, options, provenance = load(task_config, label_model_ref(task, task_config))
    previews = None
    if task_config.get("previews"):
        previews = load(task_config["previews"], label_model_ref(task, task_config, previews=True))
    for number, image in enumerate(images, start=1):
        started = time.perf_counter()
        preview_paths = sorted(Path(image["previews"], "x0").glob("step*.png"))
        record = None
        if image.get("meta"):
            record = json.loads(Path(image["meta"]).read_text())
            if "prompt_id" in image:
                record["prompt_id"] = image["prompt_id"]
        label_image(
            labeler,
            TASKS[task],
            options,
            Path(image["image"]),
            preview_paths,
            Path(image["out"]),
            provenance,
            batch_size,
            previews,
            record,
        )
        log.info(
            "image %d/%d: labelled %s and %d previews for %s in %.1f s",
            number,
            len(images),
            image["image"],
            len(preview_paths),
            task,
            time.perf_counter() - started,
        )


def dataset(prompts: list[dict], paths: dict[str, list[str]], out_path: str) -> None:
    import pandas as pd

    from .probing.dataset import build_manifest

    manifest = build_manifest(pd.DataFrame(prompts), paths, out_path)
    log.info("manifest of %d images: %s", len(manifest), manifest["split"].value_counts().to_dict())


def probe(
    manifest_path: str,
    source: str,
    half: str,
    layer: str,
    step: int,
    settings: dict[str, dict],
    weights_path: str,
    metrics_path: str,
    device: str = "cpu",
) -> None:
    """One probe cell; ``device``: ``probe.device`` of the config (auto, cpu or cuda)."""
    from .models import resolve_device
    from .probing.cell import Cell, run_cell
    from .probing.dataset import read_manifest
    from .probing.probes import ProbeSettings

    tasks = {task: ProbeSettings(**values) for task, values in settings.items()}
    cell = Cell(source=source, half=half, layer=layer, step=step)
    device = resolve_device(device)
    log.info("probe cell %s on %s", cell, device)
    run_cell(
        read_manifest(manifest_path),
        cell,
        tasks,
        Path(weights_path),
        Path(metrics_path),
        device,
    )


def aggregate(
    cell_metrics: list[str],
    layers_path: str,
    metrics_config: dict,
    summary_path: str,
    per_image_path: str,
) -> None:
    """``cell_metrics``: every probe cell's metrics.csv, and the labeler's per-image table."""
    from .reporting.aggregate import read_cell_metrics, summarise_metrics, write_tables

    layer_info = json.loads(Path(layers_path).read_text())
    per_image = read_cell_metrics(cell_metrics)
    summary = summarise_metrics(
        per_image,
        layer_info["layers"],
        layer_info["model"],
        metrics_config["bootstrap_resamples"],
        metrics_config["ci_level"],
        metrics_config["seed"],
    )
    write_tables(per_image, summary, summary_path, per_image_path)
    log.info("%d cells, %d summary rows", len(cell_metrics), len(summary))


def grid_ceiling(
    manifest_path: str, layers_path: str, tasks: list[str], metrics_config: dict, out_path: str
) -> None:
    """The best score each token grid allows, per task and metric
    (``ldmprobe.reporting.ceiling``)."""
    from .core.io import write_csv
    from .probing.dataset import read_manifest
    from .reporting.ceiling import ceiling_table

    layers = json.loads(Path(layers_path).read_text())["layers"]
    table = ceiling_table(read_manifest(manifest_path), layers, tasks, metrics_config)
    write_csv(out_path, table)
    log.info("%d grid-ceiling rows", len(table))


def labeler_scores(
    manifest_path: str, settings: dict[str, dict], steps: list[int], out_path: str
) -> None:
    from .core.io import write_csv
    from .probing.dataset import read_manifest
    from .reporting.emergence import labeler_scores as score

    table = score(read_manifest(manifest_path), settings, steps)
    write_csv(out_path, table)
    log.info("%d labeler-on-preview rows", len(table))


def emergence(
    per_image_path: str,
    tasks: list[str],
    metrics_config: dict,
    emergence_path: str,
    comparison_path: str,
) -> None:
    import pandas as pd

    from .reporting.emergence import write_emergence

    per_image = pd.read_csv(per_image_path, dtype={"prompt_id": str, "half": str})
    table = write_emergence(per_image, tasks, metrics_config, emergence_path, comparison_path)
    log.info("%d emergence rows", len(table))


def figure(kind: str, summary_path: str, task: str, metric: str, source: str, out_path: str):
    import pandas as pd

    from .reporting import figures

    summary = pd.read_csv(summary_path)
    {"heatmap": figures.heatmap, "curves": figures.curves}[kind](
        summary, task, metric, source, out_path
    )


def comparison_figure(
    summary_path: str, emergence_path: str, task: str, metric: str, out_path: str
) -> None:
    import pandas as pd

    from .reporting import figures

    figures.comparison(
        pd.read_csv(summary_path), pd.read_csv(emergence_path), task, metric, out_path
    )


def examples(
    manifest_path: str,
    weights: list[str],
    steps: list[int],
    task: str,
    layer: str,
    source: str,
    half: str,
    n_images: int,
    out_path: str,
    prompt_ids: list[str] | None = None,
) -> None:
    """The Figure 4 grid for ``prompt_ids`` (their test images), or the first test images."""
    import numpy as np
    import torch
    from PIL import Image

    from .core.tasks import TASKS
    from .generation.sources import named
    from .generation.storage import open_store
    from .labels import load_label
    from .probing.cell import load_probe_weights
    from .probing.dataset import read_manifest, usable_by_all
    from .probing.probes import LinearProbe, TrainedProbe, predict_maps
    from .reporting.figures import example_grid

    manifest = read_manifest(manifest_path)
    # Examples show every task's label: images that have them all.
    test = manifest[(manifest["split"] == "test") & usable_by_all(manifest)]
    if prompt_ids:
        test = test[test["prompt_id"].isin(prompt_ids)]
        if test.empty:
            raise ValueError(f"figures.example_prompts: none of {prompt_ids} is a test image")
    else:
        test = test.head(n_images)
    kind = TASKS[task].kind
    probes = []
    for path in weights:
        tensors, metadata = load_probe_weights(path)
        info = metadata["training"][task]
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{task}.")}
        module = LinearProbe(state["linear.weight"].shape[1], kind)
        module.load_state_dict(state)
        height, width = metadata["grid"]
        probes.append(
            (
                TrainedProbe(module, 0, "", [], info["target_mean"], info["target_std"]),
                height,
                width,
            )
        )
    rows = []
    for _, image in test.iterrows():
        group = open_store(image["store"])
        label = load_label(image[TASKS[task].label_key])
        probe_maps = []
        for step, (trained, height, width) in zip(steps, probes, strict=True):
            x = named(source).read(group, source, half, layer, step, image["store"])
            x = torch.from_numpy(np.asarray(x))[None]
            probe_maps.append(predict_maps(trained, x, height, width)[0].astype(float))
        previews_dir = Path(image["image"]).parent / "previews" / "x0"
        rows.append(
            {
                "title": f"{image['prompt_id']} s{image['seed']}",
                "image": np.asarray(Image.open(image["image"]).convert("RGB")),
                "previews": [
                    np.asarray(Image.open(previews_dir / f"step{s:03d}.png").convert("RGB"))
                    for s in steps
                ],
                "preview_labels": [label["preview_target"][s] for s in steps],
                "probe": probe_maps,
                "label": label["target"],
            }
        )
    example_grid(rows, steps, task, layer, out_path)
