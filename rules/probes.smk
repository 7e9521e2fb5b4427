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
    params:
        half=CONFIG["probe"]["cfg_half"],
        settings=probe_settings(CONFIG),
    script:
        "../scripts/probe.py"


rule aggregate:
    input:
        cells=lambda wildcards: cell_files("metrics.csv"),
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
