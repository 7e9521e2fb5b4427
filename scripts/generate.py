from ldmprobe import jobs
from ldmprobe.core.batches import image_entries

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.generate(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    generation={**snakemake.params.generation, "device": snakemake.params.device},
    images=image_entries(
        snakemake.params.images,
        image=snakemake.output.image,
        previews=snakemake.output.previews,
        store=snakemake.output.store,
        meta=snakemake.output.meta,
    ),
    controls=snakemake.params.controls,
    prompt_encoding=snakemake.params.prompt_encoding,
    store=snakemake.params.store,
)
