# The rules of every per-image stage (declared as an ImageStage in its own .smk: generate,
# label, classify_generate, classify), written once: one wildcard rule per image with
# images_per_job 1, else one rule per batch of images_per_job consecutive table rows.
# The script path is looked up by rule name: Snakemake evaluates `script:` twice, here (where
# `rule` is not defined: the loop's rule_name) and again when the job runs, after this loop has
# moved on (`stage` would be the last stage), in the rule's code, which sees the rule's name as
# `rule`; every other directive is evaluated here only.
IMAGE_RULE_SCRIPTS = {}
for stage in IMAGE_STAGES:
    for rule_name, batch in image_rules(stage.stage, stage.keys):
        IMAGE_RULE_SCRIPTS[rule_name] = stage.entry_point

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
                IMAGE_RULE_SCRIPTS[locals().get("rule", rule_name)]
