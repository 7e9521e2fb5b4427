include: "controls_common.smk"


# One job per (prompt id, seed): image, previews, latents and self-attention activations.
rule generate:
    input:
        model_input(CONFIG["models"]["diffusion"]),
    output:
        image=f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/image.png",
        previews=directory(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/previews"),
        store=directory(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/activations.zarr"),
        meta=f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/meta.json",
    log:
        f"{LOGS}/generate/{{prompt_id}}/{{seed}}.log",
    conda:
        "../envs/generate.yaml"
    resources:
        gpu=gpu_count(CONFIG["generation"]["device"]),
    params:
        prompt=prompt_of,
        model=CONFIG["models"]["diffusion"],
        allow_download=ALLOW_DOWNLOAD,
        generation=CONFIG["generation"],
        controls=generation_controls(),
        prompt_encoding=CONFIG["prompts"]["encoding"],
    script:
        "../scripts/generate.py"
