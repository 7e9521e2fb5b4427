rule figure:
    input:
        f"{RESULTS}/tables/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/{{kind}}/{{task}}-{{metric}}.png",
            caption="../report/probe_figure.rst",
            category="Probes",
            subcategory="{task}",
            labels={"figure": "{kind}", "task": "{task}", "metric": "{metric}"},
        ),
    log:
        f"{LOGS}/figure/{{kind}}/{{task}}-{{metric}}.log",
    wildcard_constraints:
        kind="heatmap|curves",
    conda:
        "../envs/report.yaml"
    params:
        source=SOURCE,
    script:
        "../scripts/figure.py"


rule examples:
    input:
        manifest=f"{RESULTS}/dataset.csv",
        weights=lambda wildcards: [
            f"{RESULTS}/probes/{SOURCE}/{example_layer()}/step{step}/probe.safetensors"
            for step in probe_grid()[1]
        ],
    output:
        report(
            f"{RESULTS}/figures/examples/{{task}}.png",
            caption="../report/examples.rst",
            category="Examples",
            subcategory="{task}",
            labels={"figure": "examples", "task": "{task}"},
        ),
    log:
        f"{LOGS}/examples/{{task}}.log",
    conda:
        "../envs/report.yaml"
    params:
        steps=lambda wildcards: probe_grid()[1],
        layer=lambda wildcards: example_layer(),
        source=SOURCE,
        half=CONFIG["probe"]["cfg_half"],
        n_images=CONFIG["figures"]["example_images"],
        prompt_ids=CONFIG["figures"]["example_prompts"],
    script:
        "../scripts/examples.py"


rule comparison_figure:
    input:
        summary=f"{RESULTS}/tables/metrics.csv",
        emergence=f"{RESULTS}/tables/emergence.csv",
    output:
        report(
            f"{RESULTS}/figures/comparison/{{task}}-{{metric}}.png",
            caption="../report/comparison_figure.rst",
            category="Emergence",
            subcategory="{task}",
            labels={"figure": "comparison", "task": "{task}", "metric": "{metric}"},
        ),
    log:
        f"{LOGS}/comparison_figure/{{task}}-{{metric}}.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/comparison_figure.py"
