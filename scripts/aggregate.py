from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.aggregate(
    list(snakemake.input.cells),
    snakemake.input.layers,
    snakemake.params.metrics,
    snakemake.output.summary,
    snakemake.output.per_image,
)
