from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.generate(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    generation=snakemake.params.generation,
    prompt=snakemake.params.prompt,
    seed=int(snakemake.wildcards.seed),
    image=snakemake.output.image,
    previews=snakemake.output.previews,
    store=snakemake.output.latents,
    meta=snakemake.output.meta,
    capture_activations=False,
)
