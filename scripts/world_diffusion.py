from ldmprobe import jobs
from ldmprobe.world import train

jobs.setup_job(snakemake.log[0], snakemake.threads)
recipe = train.Recipe.from_dict(snakemake.params.recipe)
train.train_diffusion(
    recipe,
    snakemake.input.vae,
    snakemake.input.latents,
    snakemake.output[0],
    snakemake.params.checkpoint,
    snakemake.params.device,
)
