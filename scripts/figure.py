from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.figure(
    snakemake.wildcards.kind,
    snakemake.input[0],
    snakemake.wildcards.task,
    snakemake.wildcards.metric,
    snakemake.params.source,
    snakemake.output[0],
)
