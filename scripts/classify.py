from ldmprobe import jobs
from ldmprobe.classification.jobs import classify_job
from ldmprobe.core.batches import image_entries

jobs.setup_job(snakemake.log[0], snakemake.threads)
classify_job(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    device=snakemake.params.device,
    batch_size=snakemake.params.batch_size,
    top_k=snakemake.params.top_k,
    kinds=snakemake.params.kinds,
    classes=snakemake.params.classes,
    images=image_entries(
        snakemake.params.images,
        image=snakemake.input.image,
        previews=snakemake.input.previews,
        meta=snakemake.input.meta,
        topk=snakemake.output.topk,
        curves=snakemake.output.curves,
    ),
)
