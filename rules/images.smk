# The rules of every per-image stage (declared as an ImageStage in its own .smk: generate,
# label, classify_generate, classify), written once: one wildcard rule per image with
# images_per_job 1, else one rule per batch of images_per_job consecutive table rows.
# Snakemake evaluates a rule's `script:` twice: when the rule is defined, and when its job runs,
# inside the job's function, after this loop has ended (the loop variables then hold the last
# stage). So the script is looked up by rule name: the loop's at definition, the job's `rule`
# when it runs.
IMAGE_SCRIPTS = {}
for stage in IMAGE_STAGES:
    for rule_name, batch in image_rules(stage.stage, stage.keys):
        IMAGE_SCRIPTS[rule_name] = stage.entry_point

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
                IMAGE_SCRIPTS[locals().get("rule", rule_name)]
