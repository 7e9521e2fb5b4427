from ldmprobe import jobs

jobs.setup_job(snakemake.log[0], snakemake.threads)
paths = {column: list(snakemake.input[column]) for column in snakemake.input.keys()}  # noqa: SIM118 (a Namedlist)
jobs.dataset(snakemake.params.prompts, paths, snakemake.output[0])
