"""The benchmarks run (on tiny sizes; timings are not checked), and what they rely on."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest
import yaml
from workflow import REPO

from ldmprobe.generation.storage import ActivationWriter, create_store

sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.parametrize("max_pending", [0, 2])
def test_writer_writes_every_chunk_synchronously_or_from_its_thread(tmp_path, max_pending):
    values = np.random.default_rng(0).standard_normal((5, 6, 4)).astype(np.float16)
    group = create_store(tmp_path / "s.zarr", {"a": (values.shape, "float16")}, {"name": "zstd"})
    writer = ActivationWriter(group, max_pending)
    for step in range(5):
        writer.put("a", step, values[step])
        if max_pending == 0:
            # Synchronous: the chunk is in the store as soon as put returns.
            assert np.array_equal(group["a"][step], values[step])
    writer.close()
    assert np.array_equal(group["a"][:], values)


@pytest.mark.parametrize("max_pending", [0, 2])
def test_writer_reports_a_failed_write(tmp_path, max_pending):
    group = create_store(tmp_path / "s.zarr", {"a": ((2, 3), "float16")}, {"name": "none"})
    writer = ActivationWriter(group, max_pending)
    with pytest.raises(KeyError, match="nope"):
        writer.put("nope", 0, np.zeros(3, np.float16))
        writer.close()


def run_tiny(script: str, results_dir, *args: str) -> list[dict]:
    """Run ``bench/<script>.py --tiny`` in this process; its JSONL records."""
    importlib.import_module(script).main(["--tiny", "--results-dir", str(results_dir), *args])
    records = [
        json.loads(line)
        for path in sorted(results_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    for entry in records:
        assert entry["machine"]["label"] and len(entry["load"]) == 3
        assert entry["config"]["tiny"] is True
    return records


def test_unet_calls_counts_the_reference_grid(tmp_path):
    records = {r["config"]["unit"]: r["results"] for r in run_tiny("bench_unet_calls", tmp_path)}
    # SD v1.4 at 15 LMS steps: 15 U-Net calls per image, 16 self-attention layers in 7 blocks
    # (3 down, mid, 3 up); the reference regenerates steps 0..s for every probed (s, unit).
    for unit, count in (("layer", 16), ("block", 7)):
        assert records[unit]["workflow_calls"] == 15 * 617
        assert records[unit]["reference_calls"] == sum(range(1, 16)) * count * 617
        assert records[unit]["ratio"] == pytest.approx(120 * count / 15)


def test_dump_overhead_times_every_mode(tmp_path):
    (entry,) = run_tiny("bench_dump", tmp_path)
    results = entry["results"]
    assert set(results["median_s"]) == {"plain", "dump", "dump_sync", "job"}
    assert all(seconds > 0 for seconds in results["median_s"].values())
    assert results["ratio_dump"] == pytest.approx(
        results["median_s"]["dump"] / results["median_s"]["plain"]
    )
    assert all(len(values) == 1 for values in results["cpu_seconds"].values())
    assert results["cpu_ratio_job"] > 0
    assert results["store_bytes"] > 0


def test_storage_compares_codecs_on_activations_and_random_data(tmp_path):
    records = run_tiny("bench_storage", tmp_path)
    kinds = {(r["config"]["codec"]["name"], r["config"]["data"]) for r in records}
    assert kinds == {(c, d) for c in ("none", "zstd") for d in ("activations", "random fp16")}
    for entry in records:
        results = entry["results"]
        assert results["stored_bytes_per_image"] > 0
        if entry["config"]["codec"]["name"] == "none":
            # Uncompressed chunks plus metadata: never smaller than the raw fp16 bytes.
            assert results["compression_ratio"] <= 1


def test_probe_cell_times_training_against_reading(tmp_path):
    (entry,) = run_tiny("bench_probe", tmp_path)
    results = entry["results"]
    assert results["cell_fp16_bytes"] == 10 * 4 * 4 * 16 * 2
    assert results["train_s"] > 0 and all(seconds > 0 for seconds in results["read_s"])
    assert all(seconds > 0 for seconds in results["products_s"])
    assert results["floor_s"] == max(results["read_s"][0], results["products_s"][0])
    assert results["train_peak_rss_bytes"] > 0


def test_store_bench_compares_the_store_settings_and_codecs(tmp_path):
    """The demo's read store holds less than all of it; the 8-bit codecs are compared with
    float16 on the same cells (tiny: one layer, one step, both tasks)."""
    records = {r["bench"]: r for r in run_tiny("bench_store", tmp_path)}
    assert records["store_set"]["results"]["ratio"] > 1
    metrics = records["codec_metrics"]["results"]
    assert metrics["bytes_per_image"] < metrics["baseline_bytes_per_image"]
    cells = {(cell["task"], cell["metric"]) for cell in metrics["cells"]}
    # Every metric the cell writes: each task's own, and the variants (depth's *_objects,
    # *_residual) where the labels give them.
    from ldmprobe.core.metrics import VARIANTS
    from ldmprobe.core.tasks import TASKS

    headline = {(task, metric) for task in ("saliency", "depth") for metric in TASKS[task].metrics}
    variants = {f"{name}_{variant}" for variant, names in VARIANTS.items() for name in names}
    assert headline <= cells
    assert {metric for _task, metric in cells - headline} <= variants


def test_store_bench_compares_the_codecs_on_the_world(tmp_path):
    """The world mode: the committed world model's images, exact labels (tiny: 4 DDIM steps,
    8 images, one layer at the last step; depth and shading only where the fit holds)."""
    records = run_tiny("bench_store", tmp_path, "--model", "world")
    assert {r["config"]["codec"]["quantise"] for r in records} == {"int8-token", "int8-channel"}
    for entry in records:
        assert entry["config"]["model"] == "world"
        results = entry["results"]
        assert results["bytes_per_image"] < results["baseline_bytes_per_image"]
        assert results["images_per_task"]["saliency"] == {"train": 4, "val": 2, "test": 2}
        assert {cell["layer"] for cell in results["cells"]} == {"up2.1"}
        assert ("saliency", "dice") in {(cell["task"], cell["metric"]) for cell in results["cells"]}


def test_dag_scale_dry_runs_the_whole_grid(tmp_path):
    (entry,) = run_tiny("bench_dag", tmp_path)
    jobs = entry["results"]["jobs"]
    tasks = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["labels"]["tasks"]
    # One generate job per prompt, one label job per (prompt, task); at least one probe job
    # per (layer, step) cell of the U-Net (the controls add their own cells).
    # Batch rules count under their stage (generate_batch0 -> generate).
    batches = -(-entry["config"]["prompts"] // entry["config"]["images_per_job"])
    assert jobs["generate"] == batches
    assert jobs["label"] == batches * len(tasks)
    assert jobs["probe"] >= 16 * 15


def test_cluster_bench_sums_the_seconds_the_job_logs_give(tmp_path):
    import bench_cluster

    generate = tmp_path / "batch0.log"
    generate.write_text(
        "2026-11-23 08:00:00,000 INFO ldmprobe: pipeline loaded in 6.5 s\n"
        "2026-11-23 08:00:02,000 INFO ldmprobe: image 1/2 generated in 1.2 s\n"
        "2026-11-23 08:00:03,000 INFO ldmprobe: image 2/2 generated in 0.8 s\n"
    )
    label = tmp_path / "label.log"
    label.write_text(
        "... INFO ldmprobe: depth labeler Intel/dpt-large loaded in 2.0 s\n"
        "... INFO ldmprobe: image 1/1: labelled a.png and 15 previews for depth in 0.5 s\n"
    )
    assert bench_cluster.logged_seconds([generate], bench_cluster.GENERATE_LOAD) == 6.5
    assert bench_cluster.logged_seconds(
        [generate, generate], bench_cluster.GENERATE_WORK
    ) == pytest.approx(4.0)
    assert bench_cluster.logged_seconds([label], bench_cluster.LABEL_LOAD) == 2.0
    assert bench_cluster.logged_seconds([label], bench_cluster.LABEL_WORK) == 0.5


def test_study_bench_runs_the_whole_workflow_and_times_its_stages(tmp_path):
    (entry,) = run_tiny("bench_study", tmp_path, "--cores", "2")
    results = entry["results"]
    assert {"models", "generate", "label", "probes", "tables", "figures", "report"} <= set(
        results["stages"]
    )
    assert all(stage["span_s"] >= 0 for stage in results["stages"].values())
    assert results["stages"]["generate"]["jobs"] == 1  # 4 images, a job per 4
    assert results["bytes"]["total"] > results["bytes"]["generation"] > 0
    assert entry["config"]["images"] == 4 and entry["config"]["device"] == "cpu"


def test_study_bench_reads_the_jobs_of_a_snakemake_log():
    import bench_study

    log = """[Fri Dec  4 21:21:05 2026]
localrule generate_batch0:
    input: a
    jobid: 3
[Fri Dec  4 21:21:17 2026]
rule probe:
    jobid: 7
[Fri Dec  4 21:21:20 2026]
Finished jobid: 3 (Rule: generate_batch0)
[Fri Dec  4 21:21:30 2026]
Finished jobid: 7 (Rule: probe)
"""
    stages = bench_study.stage_seconds(bench_study.job_times(log))
    assert stages == {
        "generate": {"jobs": 1, "busy_s": 15.0, "span_s": 15.0},
        "probes": {"jobs": 1, "busy_s": 13.0, "span_s": 13.0},
    }
    assert bench_study.stage_of("labeler_scores") == "tables"
    assert bench_study.stage_of("label_batch2") == "label"


def test_demo_end_to_end_plans_the_demo(tmp_path):
    (entry,) = run_tiny("bench_demo", tmp_path)
    assert entry["results"]["jobs"] > 0
    assert "total_s" not in entry["results"]


def test_world_training_plans_every_world_model_on_the_cpu_into_fresh_folders(tmp_path):
    (entry,) = run_tiny("bench_world_train", tmp_path)
    world = entry["config"]["world"]
    assert world["device"] == "cpu" and world["diffusion"] == {}
    assert world["weights_dir"] != "world/weights"  # nothing committed is reused
    # The VAE, latents, U-Net, labeler, classifier, world definition, and the target rule.
    assert entry["results"]["jobs"] == 7
    assert "wall_s" not in entry["results"]


def test_readout_finds_a_planted_linear_map_and_pools_labels_to_the_token_grid():
    import bench_readout

    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 8))
    targets = features @ rng.normal(size=8) + 3.0
    _weights, residual = bench_readout.least_squares(features, targets)
    assert residual < 1e-6
    _weights, residual = bench_readout.least_squares(features, rng.normal(size=500))
    assert residual > 0.9  # noise is not linear in the features
    maps = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)
    pooled = bench_readout.pooled(maps, (2, 2))
    assert pooled.shape == (2, 4)
    assert pooled[0].tolist() == [2.5, 4.5, 10.5, 12.5]


def test_report_renders_every_record_with_its_machine(tmp_path):
    import report

    run_tiny("bench_unet_calls", tmp_path)
    records = report.read_records(tmp_path)
    # Tiny records are smoke tests: never shown; a GPU-less set marks the GPU row pending.
    tables = report.render_tables(records)
    assert "128x" not in tables["unet_calls"]
    assert "pending: `make bench-gpu`" in tables["dump_overhead"]
    assert (
        "pending: `python bench/bench_study.py --images 100 --device cuda`"
        in (tables["study_end_to_end"])
    )
    for entry in records:
        entry["config"]["tiny"] = False
    tables = report.render_tables(records)
    assert "| layer (16) | 15 | 9,255 | 1,184,640 | **128x** |" in tables["unet_calls"]
    assert tables["unet_calls"].count("| M1 |") == 2
    assert tables["machines"] == f"- M1: {records[0]['machine']['label']}"
    # A stale body no table can contain (tables hold words such as "hold").
    stale = "<stale table body>"
    document = "intro\n" + "".join(
        f"<!-- table:{name} -->\n{stale}\n<!-- /table:{name} -->\n" for name in tables
    )
    filled = report.fill(document, tables)
    assert stale not in filled and tables["unet_calls"] in filled
