from ldmprobe import jobs
from ldmprobe.world import train

jobs.setup_job(snakemake.log[0], snakemake.threads)
recipe = train.Recipe.from_dict(snakemake.params.recipe)
train.encode_latents(recipe, snakemake.input[0], snakemake.output[0], snakemake.params.device)
