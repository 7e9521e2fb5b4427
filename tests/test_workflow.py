"""The whole workflow on a tiny study: outputs, report, and which jobs a change reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr
from PIL import Image
from workflow import REWRITES, TINY_KEYS, jobs_to_run, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    config = tiny_config(workdir)
    run_snakemake(workdir, config)
    return workdir, config


def test_outputs_of_every_stage(study):
    workdir, _ = study
    results = workdir / "results"
    meta = json.loads((results / "generation/lemon/101/meta.json").read_text())
    assert meta["unet_calls"] == 15 and len(meta["layers"]) == 16
    store = zarr.open_group(str(results / "generation/lemon/101/activations.zarr"), mode="r")
    assert store["unet/cond/up3.2"].shape == (15, 64, 32)  # 8x8 tokens at 64 px
    # generation.store: read (the default): only the probed layers, at the probed steps.
    assert store["unet/cond/up3.2"].attrs["stored_steps"] == [0, 14]
    assert sorted(p.name for p in (Path(store.store.root) / "unet/cond/up3.2/c").iterdir()) == [
        "0",
        "14",
    ]
    assert sorted(name for name, _ in store["unet/cond"].members()) == [
        "down0.0",
        "down2.1",
        "up3.2",
    ]
    summary = pd.read_csv(results / "tables/metrics.csv")
    assert list(summary.columns) == [
        "model", "source", "task", "block", "layer", "layer_order", "step", "metric",
        "mean", "ci_low", "ci_high", "n", "ldmprobe_version",
    ]  # fmt: skip
    unet = summary[summary.source == "unet"]
    cells = unet[["layer", "step"]].drop_duplicates()
    assert sorted(map(tuple, cells.to_numpy())) == [
        ("down0.0", 0), ("down0.0", 14), ("down2.1", 0), ("down2.1", 14),
        ("up3.2", 0), ("up3.2", 14),
    ]  # fmt: skip
    # Depth beyond position: the residual (no saliency labels here, so no object regions).
    assert set(summary.metric) == {
        "spearman", "pearson", "rmse", "spearman_residual", "pearson_residual",
    }  # fmt: skip
    # The demo's controls, cheap: the permuted U-Net on down2.1 and up3.2, VAE, latent and
    # the token position alone.
    sources = summary.groupby("source")["layer"].unique().map(sorted).to_dict()
    assert sources == {
        "unet": ["down0.0", "down2.1", "up3.2"],
        "unet-permuted": ["down2.1", "up3.2"],
        "vae": ["decoder.mid.0"],
        "latent": ["xt"],
        "position": ["grid"],
        "labeler": ["preview"],
    }
    assert set(summary[summary.source != "unet"].step) == {0, 14}
    assert (summary.n == 2).all()  # two test images
    emergence = pd.read_csv(results / "tables/emergence.csv")
    assert list(emergence.columns[:7]) == [
        "task", "layer", "source", "metric", "step", "ci_low", "ci_high",
    ]  # fmt: skip
    assert len(emergence) == len(summary[["source", "layer", "metric"]].drop_duplicates())
    compared = pd.read_csv(results / "tables/emergence_comparison.csv")
    assert compared.task.tolist() == ["depth"] and compared.sentence.str.contains("labeler").all()
    assert (summary.ci_low <= summary["mean"]).all() and (summary["mean"] <= summary.ci_high).all()
    # The grid ceiling: per token grid of the 16 layers, over the same two test images; no
    # probe's mean Pearson beats its grid's (the block means' Pearson is the exact maximum).
    ceiling = pd.read_csv(results / "tables/grid_ceiling.csv")
    grid_of = {layer["name"]: f"{layer['height']}x{layer['width']}" for layer in meta["layers"]}
    assert set(ceiling.grid) == set(grid_of.values())
    # One token (the 1x1 middle layer) paints one value: no correlation is defined there.
    correlations = ceiling.metric.isin(["spearman", "pearson"])
    assert (ceiling[correlations & (ceiling.grid == "1x1")].n == 0).all()
    assert (ceiling[~correlations | (ceiling.grid != "1x1")].n == 2).all()
    best = ceiling[ceiling.metric == "pearson"].set_index("grid")["mean"].dropna()
    probed = unet[(unet.metric == "pearson") & unet.layer.map(grid_of).isin(best.index)]
    assert len(probed) >= 4
    for row in probed.itertuples():
        assert row.mean <= best[grid_of[row.layer]] + 1e-9, row
    for name in (
        "heatmap/depth-spearman.png",
        "curves/depth-rmse.png",
        "examples/depth.png",
        "comparison/depth-spearman.png",
    ):
        assert (results / "figures" / name).stat().st_size > 5_000
    assert not list(results.rglob(".*tmp-*")), "temporary files left behind"


def test_report(study):
    workdir, config = study
    run_snakemake(workdir, config, "--report", "results/report.html")
    html = (workdir / "results/report.html").read_text(errors="replace")
    for text in ("heatmap", "examples", "metrics.csv", "resources/demo-models/stable-diffusion"):
        assert text in html


def test_nothing_to_do_after_a_complete_run(study):
    workdir, config = study
    assert jobs_to_run(run_snakemake(workdir, config, "-n")) == {}


def test_probe_hyperparameter_reruns_only_downstream_of_probes(study):
    workdir, _ = study
    changed = tiny_config(workdir, probe__defaults={"epochs": 6})
    counts = jobs_to_run(run_snakemake(workdir, changed, "-n"))
    downstream = {"aggregate", "figure", "examples", "emergence", "comparison_figure", "all"}
    assert set(counts) == {"probe", *downstream}
    assert counts["probe"] == 16  # 6 U-Net cells, 4 permuted, 2 VAE, 2 latent, 2 position


def test_what_is_read_is_what_generation_stores(study):
    """With generation.store: read, a new probed step is a change of what generation writes."""
    workdir, _ = study
    changed = tiny_config(workdir, probe__steps=[0, 7, 14])
    counts = jobs_to_run(run_snakemake(workdir, changed, "-n"))
    assert counts["generate"] >= 1 and counts["probe"] > 14
    tiny_config(workdir)  # restore for the other tests


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_a_rewritten_config_leaves_nothing_to_do(study, rewrite):
    """Every mapping's keys reordered, flow instead of block style, numbers spelled otherwise:
    the same study, so the same params, and nothing reruns."""
    workdir, config = study
    path = workdir / f"config-{rewrite}.yaml"
    path.write_text(REWRITES[rewrite](yaml.safe_load(config.read_text())))
    assert jobs_to_run(run_snakemake(workdir, path, "-n")) == {}


def test_where_and_how_jobs_run_reruns_nothing(study):
    """Devices (`auto` resolves to this machine's), batch sizes and downloads decide how a job
    runs, not what it writes: they are not params (rules/common.smk, `untracked`)."""
    workdir, config = study
    settings = yaml.safe_load(config.read_text())
    settings["generation"]["device"] = "auto"
    settings["labels"].update(device="auto", batch_size=3)
    settings["models"]["allow_download"] = True
    path = workdir / "config-run-settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    assert jobs_to_run(run_snakemake(workdir, path, "-n")) == {}


def test_generation_setting_reruns_generation_and_downstream(study):
    workdir, config = study
    settings = yaml.safe_load(config.read_text())
    settings["generation"]["guidance_scale"] = 5.0
    path = workdir / "config-guidance.yaml"
    path.write_text(yaml.safe_dump(settings))
    counts = jobs_to_run(run_snakemake(workdir, path, "-n"))
    downstream = {"aggregate", "figure", "examples", "emergence", "comparison_figure", "all"}
    assert set(counts) == {
        "generate", "label", "dataset", "probe", "labeler_scores", "grid_ceiling", *downstream,
    }  # fmt: skip
    assert counts["generate"] == counts["label"] == len(TINY_KEYS) and counts["probe"] == 16


def test_every_output_records_the_package_version(study):
    from ldmprobe.core.provenance import VERSION_KEY, package_version
    from ldmprobe.labels import load_provenance
    from ldmprobe.probing.cell import load_probe_weights

    workdir, _ = study
    results = workdir / "results"
    version = package_version()
    image = results / "generation/lemon/101"
    for path in (image / "meta.json", results / "model/layers.json"):
        assert json.loads(path.read_text())[VERSION_KEY] == version, path
    store = zarr.open_group(str(image / "activations.zarr"), mode="r")
    assert store.attrs[VERSION_KEY] == version
    for path in (image / "image.png", image / "previews/x0/step000.png"):
        assert Image.open(path).text[VERSION_KEY] == version, path
    assert Image.open(results / "figures/heatmap/depth-spearman.png").text[VERSION_KEY] == version
    assert load_provenance(results / "labels/depth/lemon/101.npz")[VERSION_KEY] == version
    cell = results / "probes/unet/up3.2/step14"
    assert load_probe_weights(cell / "probe.safetensors")[1][VERSION_KEY] == version
    for path in (
        cell / "metrics.csv",
        results / "dataset.csv",
        results / "tables/metrics.csv",
        results / "tables/per_image_metrics.csv.gz",
        results / "tables/emergence.csv",
    ):
        assert set(pd.read_csv(path)[VERSION_KEY]) == {version}, path


def test_new_prompt_row_adds_only_its_own_generation_and_labels(study):
    workdir, _ = study
    prompts = workdir / "prompts.csv"
    original = prompts.read_text()
    try:
        prompts.write_text(original + "kite,a red kite in a blue sky,777,train\n")
        counts = jobs_to_run(run_snakemake(workdir, workdir / "config.yaml", "-n"))
    finally:
        prompts.write_text(original)
    assert counts["generate"] == 1 and counts["label"] == 1
    assert counts["dataset"] == 1 and counts["probe"] == 16 and counts["labeler_scores"] == 1
    assert "layer_table" not in counts and "demo_model" not in counts


def test_batches_write_what_a_job_per_image_writes(study, tmp_path):
    """images_per_job 3: the 7 images in batches of 3, 3 and 1, one model load per batch and
    stage, the per-image files byte for byte the per-image jobs' (the `study` fixture)."""
    per_image_dir, _ = study
    config = tiny_config(tmp_path, images_per_job=3)
    labels = [f"results/labels/depth/{pid}/{seed}.npz" for pid, seed in TINY_KEYS]
    run_snakemake(tmp_path, config, *labels)

    for batch, size in enumerate([3, 3, 1]):
        log = (tmp_path / f"results/logs/generate/batch{batch}.log").read_text()
        assert log.count("loading pipeline") == 1 and f"image {size}/{size} generated" in log
        label_log = (tmp_path / f"results/logs/label/depth/batch{batch}.log").read_text()
        assert label_log.count("loaded in") == 1 and f"image {size}/{size}: labelled" in label_log
    for pid, seed in TINY_KEYS:
        image = Path(f"results/generation/{pid}/{seed}")
        files = [
            image / "image.png",
            image / "meta.json",
            Path(f"results/labels/depth/{pid}/{seed}.npz"),
        ]
        files += [
            path.relative_to(per_image_dir)
            for path in (per_image_dir / image / "activations.zarr").rglob("*")
            if path.is_file()
        ]
        for path in files:
            assert (tmp_path / path).read_bytes() == (per_image_dir / path).read_bytes(), path

    assert jobs_to_run(run_snakemake(tmp_path, config, *labels, "-n")) == {}
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(prompts.read_text() + "kite,a red kite in a blue sky,777,train\n")
    counts = jobs_to_run(
        run_snakemake(tmp_path, config, *labels, "results/labels/depth/kite/777.npz", "-n")
    )
    # The appended row joins the last batch; the full batches are left alone.
    assert counts == {"generate_batch2": 1, "label_batch2": 1}
