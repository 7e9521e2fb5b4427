from ldmprobe import jobs
from ldmprobe.scenes.fit import save_world_spec

jobs.setup_job(snakemake.log[0], snakemake.threads)
save_world_spec(snakemake.output[0])
