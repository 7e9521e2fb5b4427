"""The study on each new model family's tiny random model, which the workflow builds itself:
SDXL and PixArt-Σ end to end (generation -> labels -> probes -> tables, figures, report), SD3
and Flux through generation and one probe cell. Four steps and seven images at 64 px, one
batch of images per stage, keep each run short."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import zarr
from workflow import REPO, TINY_KEYS, jobs_to_run, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

# demo model: (backbone, scheduler, probed layers, permuted-control layer)
FAMILIES = {
    "stable-diffusion-xl": ("stable-diffusion-xl", "euler", ["down1.0.t0", "mid.0.t2"]),
    "pixart-sigma": ("pixart", "dpmpp", ["block00", "block03"]),
    "stable-diffusion-3": ("stable-diffusion-3", "flow-euler", ["block00", "block02"]),
    "flux": ("flux", "flow-euler", ["double00", "single01"]),
}


def family_config(workdir, kind: str):
    backbone, scheduler, layers = FAMILIES[kind]
    return tiny_config(
        workdir,
        images_per_job=len(TINY_KEYS),
        models__diffusion={"id": f"resources/demo-models/{kind}", "backbone": backbone},
        generation__scheduler=scheduler,
        generation__steps=4,
        generation__guidance_scale=4.5,
        probe__layers=layers,
        probe__steps=[0, 3],
        controls__permuted_unet={"enabled": True, "seed": 0, "layers": layers[-1:], "steps": None},
        controls__position={"enabled": False, "steps": None},
        controls__latent={"enabled": False, "steps": None},
    )


@pytest.mark.parametrize("kind", ["stable-diffusion-xl", "pixart-sigma"])
def test_whole_study_on_a_tiny_family_model(kind, tmp_path):
    config = family_config(tmp_path, kind)
    run_snakemake(tmp_path, config)
    run_snakemake(tmp_path, config, "--report", "results/report.html")
    results = tmp_path / "results"
    backbone, _scheduler, layers = FAMILIES[kind]
    source = "unet" if backbone == "stable-diffusion-xl" else "transformer"
    meta = json.loads((results / "generation/lemon/101/meta.json").read_text())
    assert meta["unet_calls"] == 4 and meta["scheduler"] != "LMSDiscreteScheduler"
    store = zarr.open_group(str(results / "generation/lemon/101/activations.zarr"), mode="r")
    assert store[f"{source}/cond/{layers[0]}"].shape[0] == 4

    summary = pd.read_csv(results / "tables/metrics.csv")
    probed = summary.groupby("source")["layer"].unique().map(sorted).to_dict()
    assert probed == {
        source: sorted(layers),
        f"{source}-permuted": layers[-1:],
        "vae": ["decoder.mid.0"],
        "labeler": ["preview"],
    }
    assert set(summary.step) == {0, 3} and (summary.n == 2).all()
    assert (summary.ci_low <= summary["mean"]).all()
    assert (results / "figures/heatmap/depth-spearman.png").stat().st_size > 5_000
    html = (results / "report.html").read_text(errors="replace")
    assert f"resources/demo-models/{kind}" in html and "metrics.csv" in html
    if source == "transformer":
        # A transformer's outputs never say unet.
        assert not [p for p in results.rglob("*unet*")], "a transformer's path says unet"


@pytest.mark.parametrize("kind", ["stable-diffusion-3", "flux"])
def test_generation_and_one_probe_cell_on_a_tiny_family_model(kind, tmp_path):
    config = family_config(tmp_path, kind)
    layer = FAMILIES[kind][2][-1]
    cell = f"results/probes/transformer/{layer}/step3/metrics.csv"
    run_snakemake(tmp_path, config, cell)
    metrics = pd.read_csv(tmp_path / cell)
    assert set(metrics.metric) >= {"spearman", "rmse"} and metrics["value"].notna().all()
    meta = json.loads((tmp_path / "results/generation/lemon/101/meta.json").read_text())
    assert meta["cfg_halves"] == ["cond"] and meta["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert layer in [entry["name"] for entry in meta["layers"]]


@pytest.mark.parametrize("name", ["config", "sdxl", "pixart", "sd3", "flux", "world", "world-demo"])
def test_reference_config_dry_run_builds_the_dag_without_weights(name, tmp_path):
    """`snakemake -n --configfile config/<family>.yaml` on a machine without the weights: the
    DAG up to the layer table, and the models a real run needs, named."""
    result = run_snakemake(tmp_path, REPO / "config" / f"{name}.yaml", "-n")
    counts = jobs_to_run(result)
    assert counts["layer_table"] == 1 and counts["generate_batch0"] == 1
    if "dry run without these models" in result.stderr:
        assert "models.diffusion" in result.stderr
