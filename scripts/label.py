from ldmprobe import jobs
from ldmprobe.core.batches import image_entries

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.label(
    task=snakemake.wildcards.task,
    task_config=snakemake.params.task,
    allow_download=snakemake.params.allow_download,
    device=snakemake.params.device,
    batch_size=snakemake.params.batch_size,
    images=image_entries(
        snakemake.params.images,
        image=snakemake.input.image,
        previews=snakemake.input.previews,
        out=snakemake.output.labels,
        # Only for a labeler that reads each image's generation record (rules/labels.smk).
        **({"meta": snakemake.input.meta} if snakemake.input.get("meta") else {}),
    ),
)
