from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.labeler_scores(
    manifest_path=snakemake.input.manifest,
    settings=snakemake.params.settings,
    steps=list(snakemake.params.steps),
    out_path=snakemake.output[0],
)
