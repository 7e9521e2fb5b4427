# The rules of every per-image stage (declared as an ImageStage in its own .smk: generate,
# label, classify_generate, classify), written once: one wildcard rule per image with
# images_per_job 1, else one rule per batch of images_per_job consecutive table rows.
# Snakemake evaluates `script:` again when a job runs, when the loop variable is the last
# stage, so the script is one constant that runs the stage's own (its entry_point param).
for stage in IMAGE_STAGES:
    for rule_name, batch in image_rules(stage.stage, stage.keys):

        rule:
            name:
                rule_name
            input:
                **stage.input_files(batch),
            output:
                **stage.output_files(batch),
            log:
                image_log(stage.log_folder, batch),
            group:
                image_group(batch)
            conda:
                stage.environment
            resources:
                **gpu_resources(stage.device, batch),
            params:
                **stage.settings,
                images=image_fields(stage.fields, batch),
                entry_point=untracked(stage.entry_point),
            script:
                "../scripts/image_stage.py"
