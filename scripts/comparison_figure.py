from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.comparison_figure(
    summary_path=snakemake.input.summary,
    emergence_path=snakemake.input.emergence,
    task=snakemake.wildcards.task,
    metric=snakemake.wildcards.metric,
    out_path=snakemake.output[0],
)
