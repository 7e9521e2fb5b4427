# The rules of every per-image stage (declared as an ImageStage in its own .smk: generate,
# label, classify_generate, classify), written once: one wildcard rule per image with
# images_per_job 1, else one rule per batch of images_per_job consecutive table rows.
# A function, not a bare loop: Snakemake evaluates `script:` again when a job runs, and a loop
# variable would by then be the last stage; the function's `stage` stays its own. (snakefmt
# 2.1 cannot parse a rule inside a function, hence fmt: off.)
# fmt: off
def image_stage_rules(stage):
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
            script:
                stage.entry_point


for image_stage in IMAGE_STAGES:
    image_stage_rules(image_stage)
# fmt: on
