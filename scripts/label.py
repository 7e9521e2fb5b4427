from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.label(
    task=snakemake.wildcards.task,
    task_config=snakemake.params.task,
    allow_download=snakemake.params.allow_download,
    device=snakemake.params.device,
    batch_size=snakemake.params.batch_size,
    image=snakemake.input.image,
    previews=snakemake.input.previews,
    out_path=snakemake.output[0],
)
