from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.emergence(
    per_image_path=snakemake.input[0],
    tasks=list(snakemake.params.tasks),
    metrics_config=dict(snakemake.params.metrics),
    emergence_path=snakemake.output.emergence,
    comparison_path=snakemake.output.comparison,
)
