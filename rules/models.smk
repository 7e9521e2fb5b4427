# The demo's random-weight models of the real architectures, saved like real weights.
rule demo_model:
    output:
        directory(f"{DEMO_DIR}/{{kind}}"),
    params:
        seed=0,
    log:
        f"{LOGS}/demo_model/{{kind}}.log",
    script:
        "../scripts/demo_model.py"


# Discovers every self-attention layer of the U-Net (structure only, no weights) and the
# U-Net calls of the schedule; the probe grid is read from it.
checkpoint layer_table:
    input:
        model_input(CONFIG["models"]["diffusion"]),
    output:
        f"{RESULTS}/model/layers.json",
    params:
        model=CONFIG["models"]["diffusion"],
        allow_download=ALLOW_DOWNLOAD,
        generation={
            key: CONFIG["generation"][key]
            for key in ("scheduler", "steps", "height", "width")
        },
    log:
        f"{LOGS}/layer_table.log",
    script:
        "../scripts/layer_table.py"
