# ldmprobe: what a latent diffusion model knows about the scene it draws, and when.
# Stages: prompts -> generation (image, previews, activations) -> labels -> dataset manifest
# -> one probe job per (layer, step) cell -> tables -> figures -> `snakemake --report`.
from snakemake.utils import min_version

min_version("9.0")


# --configfile replaces the reference config instead of being merged into it, so a study's
# config says everything it runs (no task inherited from another file).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/generate.smk"
include: "rules/labels.smk"
include: "rules/probes.smk"
include: "rules/figures.smk"
include: "rules/classify.smk"
include: "rules/world_labelers.smk"
include: "rules/world.smk"
include: "rules/images.smk"
include: "rules/intervention.smk"


report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        final_outputs,
