from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.examples(
    manifest_path=snakemake.input.manifest,
    weights=list(snakemake.input.weights),
    steps=snakemake.params.steps,
    task=snakemake.wildcards.task,
    layer=snakemake.params.layer,
    source=snakemake.params.source,
    half=snakemake.params.half,
    n_images=snakemake.params.n_images,
    out_path=snakemake.output[0],
    prompt_ids=list(snakemake.params.prompt_ids),
)
