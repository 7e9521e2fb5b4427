from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.score(
    task=snakemake.wildcards.task,
    task_config=snakemake.params.task,
    allow_download=snakemake.params.allow_download,
    device=snakemake.params.device,
    intervention=snakemake.params.intervention,
    condition=snakemake.wildcards.condition,
    image=snakemake.params.image,
    original_image=snakemake.input.image,
    label_path=snakemake.input.label,
    edited_dir=snakemake.input.edited,
    scores_path=snakemake.output.scores,
    maps_path=snakemake.output.maps,
)
