"""The intervention through the workflow on the tiny study: every condition's edited images,
scores, tables and figures, resumable like every other job."""

import json

import pandas as pd
import pytest
from workflow import jobs_to_run, run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

INTERVENTION = {
    "enabled": True,
    "task": "depth",
    "images": 2,
    "trials": 2,
    "layers": ["up3.2"],
    "steps": [0],
    "iterations": 8,
    "examples": 1,
    # Moving by conditioning beside moving by editing: the tiny SD 2 depth the workflow builds.
    "depth2img": {
        "enabled": True,
        "model": {"id": "resources/demo-models/stable-diffusion-2-depth"},
        "steps": 4,
    },
}
TARGETS = [
    "results/tables/intervention/depth-summary.csv",
    "results/figures/intervention/depth-distributions.png",
    "results/figures/intervention/depth-success.png",
    "results/figures/intervention/depth-examples.png",
]


@pytest.fixture(scope="module")
def intervened(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("intervention")
    config = tiny_config(
        workdir,
        intervention=INTERVENTION,
        # The probes the edit reads (and the permuted U-Net's) and nothing more.
        probe__layers=["up3.2"],
        probe__steps=[0],
        controls__permuted_unet__layers=["up3.2"],
        controls__vae__enabled=False,
        controls__latent__enabled=False,
    )
    # A whole tiny study (generation, labels, probes) comes before the edits: allow for a busy
    # machine.
    run_snakemake(workdir, config, *TARGETS, timeout=2400)
    return workdir, config


def test_every_condition_is_edited_scored_and_summarised(intervened):
    workdir, _config = intervened
    results = workdir / "results"
    summary = pd.read_csv(results / "tables/intervention/depth-summary.csv").fillna("")
    plain = summary[summary.minus == ""]
    controls = {"random-probe", "permuted-probe", "identity", "depth2img"}
    assert set(plain.condition) == {"probe"} | controls
    assert set(plain.metric) >= {"delta_spearman", "delta_rmse", "psnr", "relative_edit"}
    assert set(summary[summary.minus != ""].minus) == controls
    # depth2img edits no activation: its relative edit is undefined on every image.
    undefined = (plain.condition == "depth2img") & (plain.metric == "relative_edit")
    assert (plain[~undefined].n_images == 2).all() and (plain[undefined].n_images == 0).all()
    edits = pd.read_csv(results / "tables/intervention/depth-edits.csv.gz")
    trials = edits.groupby("condition")["trial"].nunique().to_dict()
    assert trials == {
        "probe": 2,
        "random-probe": 2,
        "permuted-probe": 2,
        "identity": 1,
        "depth2img": 2,
    }
    # Every condition of a trial draws the same offset; the identity target none.
    offsets = edits.drop_duplicates(["prompt_id", "trial", "condition"])
    translated = offsets[offsets.condition != "identity"]
    assert translated.groupby(["prompt_id", "trial"])["offset_dx"].nunique().max() == 1
    assert (offsets[offsets.condition == "identity"][["offset_dy", "offset_dx"]] == 0).all().all()
    edited = edits[(edits.metric == "relative_edit") & (edits.condition != "identity")]
    assert (edited[edited.condition != "depth2img"]["value"] > 0).all()
    assert edited[edited.condition == "depth2img"]["value"].isna().all()  # nothing edited


def test_each_edit_records_its_cost_and_sites(intervened):
    workdir, _config = intervened
    folder = workdir / "results/intervention/depth/probe/boat/666"
    cost = json.loads((folder / "cost.json").read_text())
    assert [trial["optimiser_steps"] for trial in cost["trials"]] == [8, 8]
    assert all(trial["denoiser_calls"] == 15 for trial in cost["trials"])
    sites = pd.read_csv(folder / "trial0/edits.csv")
    assert sites[["layer", "step"]].values.tolist() == [["up3.2", 0]]
    assert (folder / "trial1/image.png").is_file()
    assert len(list((folder / "trial1/previews/x0").glob("step*.png"))) == 15
    conditioned = workdir / "results/intervention/depth/depth2img/boat/666"
    cost = json.loads((conditioned / "cost.json").read_text())
    # 4 PNDM steps (5 timesteps) at the default strength 0.8: the last 4 run.
    assert [trial["denoiser_calls"] for trial in cost["trials"]] == [4, 4]
    assert (conditioned / "trial1/image.png").is_file()


def test_nothing_to_do_after_the_intervention_ran(intervened):
    workdir, config = intervened
    assert jobs_to_run(run_snakemake(workdir, config, "-n", *TARGETS)) == {}
