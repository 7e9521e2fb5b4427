# The manifest gathers every image; each probe cell depends on it alone, so the DAG stays
# small and any changed image still makes every cell stale.
rule dataset:
    input:
        unpack(dataset_inputs),
    output:
        f"{RESULTS}/dataset.csv",
    log:
        f"{LOGS}/dataset.log",
    conda:
        "../envs/probes.yaml"
    params:
        prompts=PROMPTS[["prompt_id", "seed", "split"]].to_dict("records"),
    script:
        "../scripts/dataset.py"


rule probe:
    input:
        manifest=f"{RESULTS}/dataset.csv",
    output:
        weights=f"{RESULTS}/probes/{{source}}/{{layer}}/step{{step}}/probe.safetensors",
        metrics=f"{RESULTS}/probes/{{source}}/{{layer}}/step{{step}}/metrics.csv",
    log:
        f"{LOGS}/probe/{{source}}/{{layer}}/step{{step}}.log",
    conda:
        "../envs/probes.yaml"
    threads: 1
    resources:
        **device_resources(CONFIG["probe"]["device"]),
    params:
        # The VAE and latent controls come from the guided trajectory, not one CFG half.
        half=lambda wildcards: named(wildcards.source).half_for(
            CONFIG["probe"]["cfg_half"]
        ),
        settings=probe_settings(CONFIG),
        device=untracked(CONFIG["probe"]["device"]),
    script:
        "../scripts/probe.py"


rule aggregate:
    input:
        cells=lambda wildcards: [
            *all_cell_files("metrics.csv"),
            f"{RESULTS}/tables/labeler_per_image.csv.gz",
        ],
        layers=f"{RESULTS}/model/layers.json",
    output:
        summary=report(
            f"{RESULTS}/tables/metrics.csv",
            caption="../report/metrics_table.rst",
            category="Tables",
        ),
        per_image=f"{RESULTS}/tables/per_image_metrics.csv.gz",
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../envs/probes.yaml"
    params:
        metrics=CONFIG["metrics"],
    script:
        "../scripts/aggregate.py"


# The best score each token grid of the denoiser allows under nearest upsampling, from the
# exact labels of the test images: what the probes' scores are a fraction of.
rule grid_ceiling:
    input:
        manifest=f"{RESULTS}/dataset.csv",
        layers=lambda wildcards: checkpoints.layer_table.get().output[0],
    output:
        report(
            f"{RESULTS}/tables/grid_ceiling.csv",
            caption="../report/grid_ceiling.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/grid_ceiling.log",
    conda:
        "../envs/probes.yaml"
    params:
        tasks=TASK_NAMES,
        metrics=CONFIG["metrics"],
    script:
        "../scripts/grid_ceiling.py"


# The labelers run on each step's preview, scored per test image against the final image's
# label at the U-Net probe's steps: the "off-the-shelf model on the noisy image" curve.
rule labeler_scores:
    input:
        manifest=f"{RESULTS}/dataset.csv",
        layers=lambda wildcards: checkpoints.layer_table.get().output[0],
    output:
        f"{RESULTS}/tables/labeler_per_image.csv.gz",
    log:
        f"{LOGS}/labeler_scores.log",
    conda:
        "../envs/probes.yaml"
    params:
        settings=scaling_settings(),
        steps=lambda wildcards: probe_grid()[1],
    script:
        "../scripts/labeler_scores.py"


rule emergence:
    input:
        f"{RESULTS}/tables/per_image_metrics.csv.gz",
    output:
        emergence=report(
            f"{RESULTS}/tables/emergence.csv",
            caption="../report/emergence_table.rst",
            category="Tables",
        ),
        comparison=report(
            f"{RESULTS}/tables/emergence_comparison.csv",
            caption="../report/emergence_comparison.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/emergence.log",
    conda:
        "../envs/probes.yaml"
    params:
        tasks=TASK_NAMES,
        metrics=CONFIG["metrics"],
    script:
        "../scripts/emergence.py"
