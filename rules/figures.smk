rule figure:
    input:
        f"{RESULTS}/tables/metrics.csv",
    output:
        report(
            f"{RESULTS}/figures/{{kind}}/{{task}}-{{metric}}.png",
            caption="../report/{kind}.rst",
            category="Probes",
            subcategory="{task}",
            labels={"figure": "{kind}", "task": "{task}", "metric": "{metric}"},
        ),
    params:
        source=SOURCE,
    wildcard_constraints:
        kind="heatmap|curves",
    log:
        f"{LOGS}/figure/{{kind}}/{{task}}-{{metric}}.log",
    script:
        "../scripts/figure.py"


def example_layer():
    layers, _steps = probe_grid()
    chosen = CONFIG["figures"]["example_layer"]
    return layers[-1] if chosen == "last" else chosen


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
    params:
        steps=lambda wildcards: probe_grid()[1],
        layer=lambda wildcards: example_layer(),
        source=SOURCE,
        half=CONFIG["probe"]["cfg_half"],
        n_images=CONFIG["figures"]["example_images"],
    log:
        f"{LOGS}/examples/{{task}}.log",
    script:
        "../scripts/examples.py"
