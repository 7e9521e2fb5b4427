# The demo's random-weight models of the real architectures, saved like real weights.
rule demo_model:
    output:
        directory(f"{DEMO_DIR}/{{kind}}"),
    log:
        f"{LOGS}/demo_model/{{kind}}.log",
    conda:
        "../envs/generate.yaml"
    params:
        seed=0,
    script:
        "../scripts/demo_model.py"


# Discovers every self-attention layer of the U-Net (structure only, no weights) and the
# U-Net calls of the schedule; the probe grid is read from it.
checkpoint layer_table:
    input:
        model_input(CONFIG["models"]["diffusion"]),
    output:
        f"{RESULTS}/model/layers.json",
    log:
        f"{LOGS}/layer_table.log",
    conda:
        "../envs/generate.yaml"
    params:
        model=CONFIG["models"]["diffusion"],
        allow_download=untracked(ALLOW_DOWNLOAD),
        generation={
            key: CONFIG["generation"][key]
            for key in ("scheduler", "steps", "height", "width")
        },
    script:
        "../scripts/layer_table.py"
