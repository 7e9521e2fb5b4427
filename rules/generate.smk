include: "controls_common.smk"


GENERATION_DIR = f"{RESULTS}/generation/{{prompt_id}}/{{seed}}"

# One job per (prompt id, seed), or per batch of images_per_job of them: image, previews,
# latents and self-attention activations.
for rule_name, batch in image_rules("generate", PROMPT_KEYS):

    rule:
        name:
            rule_name
        input:
            model_input(CONFIG["models"]["diffusion"]),
        output:
            image=image_files(f"{GENERATION_DIR}/image.png", batch),
            previews=directory(image_files(f"{GENERATION_DIR}/previews", batch)),
            store=directory(image_files(f"{GENERATION_DIR}/activations.zarr", batch)),
            meta=image_files(f"{GENERATION_DIR}/meta.json", batch),
        log:
            image_log(f"{LOGS}/generate", batch),
        group:
            image_group(batch)
        conda:
            "../envs/generate.yaml"
        resources:
            **gpu_resources(CONFIG["generation"]["device"], batch),
        params:
            images=image_fields(
                lambda prompt_id, seed: {
                    "prompt": PROMPT_TEXT[(prompt_id, seed)],
                    "seed": seed,
                },
                batch,
            ),
            model=CONFIG["models"]["diffusion"],
            allow_download=untracked(ALLOW_DOWNLOAD),
            generation=without(CONFIG["generation"], "device"),
            device=untracked(CONFIG["generation"]["device"]),
            controls=generation_controls(),
            store=store_params(),
            prompt_encoding=CONFIG["prompts"]["encoding"],
        script:
            "../scripts/generate.py"
