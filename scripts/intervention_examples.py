from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.examples(
    task=snakemake.wildcards.task,
    conditions=snakemake.params.conditions,
    images=snakemake.params.images,
    edited=list(snakemake.input.edited),
    maps=list(snakemake.input.maps),
    originals=list(snakemake.input.images),
    steps=snakemake.params.steps,
    out_path=snakemake.output[0],
)
