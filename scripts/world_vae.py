from ldmprobe import jobs
from ldmprobe.world import train

jobs.setup_job(snakemake.log[0], snakemake.threads)
recipe = train.Recipe.from_dict(snakemake.params.recipe)
train.train_vae(recipe, snakemake.output[0], snakemake.params.checkpoint, snakemake.params.device)
