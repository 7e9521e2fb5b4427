from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.depth2img(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    generation={**snakemake.params.generation, "device": snakemake.params.device},
    intervention=snakemake.params.intervention,
    task=snakemake.wildcards.task,
    image=snakemake.params.image,
    original_image=snakemake.input.image,
    label_path=snakemake.input.label,
    out_dir=snakemake.output[0],
)
