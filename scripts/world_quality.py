from ldmprobe import jobs
from ldmprobe.world.quality import write_quality_table

jobs.setup_job(snakemake.log[0], snakemake.threads)
write_quality_table(
    [snakemake.input.labeler, snakemake.input.classifier],
    snakemake.params.recipe,
    snakemake.output[0],
)
