# One job per (image, task), or per (batch of images_per_job images, task): the labeler on the
# final image and on every step's preview.
for rule_name, batch in image_rules("label", PROMPT_KEYS):

    rule:
        name:
            rule_name
        input:
            image=image_files(f"{GENERATION_DIR}/image.png", batch),
            previews=image_files(f"{GENERATION_DIR}/previews", batch),
            model=lambda wildcards: model_input(
                CONFIG["labels"]["tasks"][wildcards.task]["model"]
            ),
        output:
            image_files(f"{RESULTS}/labels/{{task}}/{{prompt_id}}/{{seed}}.npz", batch),
        log:
            image_log(f"{LOGS}/label/{{task}}", batch),
        group:
            image_group(batch)
        conda:
            "../envs/labels.yaml"
        resources:
            **gpu_resources(CONFIG["labels"]["device"], batch),
        params:
            images=image_fields(
                lambda prompt_id, seed: {"prompt_id": prompt_id, "seed": seed}, batch
            ),
            task=lambda wildcards: CONFIG["labels"]["tasks"][wildcards.task],
            allow_download=untracked(ALLOW_DOWNLOAD),
            device=untracked(CONFIG["labels"]["device"]),
            batch_size=untracked(CONFIG["labels"]["batch_size"]),
        script:
            "../scripts/label.py"
