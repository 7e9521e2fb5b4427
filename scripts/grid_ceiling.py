from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.grid_ceiling(
    manifest_path=snakemake.input.manifest,
    layers_path=snakemake.input.layers,
    tasks=list(snakemake.params.tasks),
    metrics_config=dict(snakemake.params.metrics),
    out_path=snakemake.output[0],
)
