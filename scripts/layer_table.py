from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.layer_table(
    snakemake.params.model,
    snakemake.params.allow_download,
    snakemake.params.generation,
    snakemake.output[0],
)
