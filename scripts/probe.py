from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.probe(
    manifest_path=snakemake.input.manifest,
    source=snakemake.wildcards.source,
    half=snakemake.params.half,
    layer=snakemake.wildcards.layer,
    step=int(snakemake.wildcards.step),
    settings=snakemake.params.settings,
    weights_path=snakemake.output.weights,
    metrics_path=snakemake.output.metrics,
    device=snakemake.params.device,
)
