from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
jobs.build_demo_model(snakemake.wildcards.kind, snakemake.output[0], snakemake.params.seed)
