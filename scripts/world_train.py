from ldmprobe import jobs
from ldmprobe.world import nets

jobs.setup_job(snakemake.log[0], snakemake.threads)
train = {"world_labeler": nets.train_dense_labeler, "world_classifier": nets.train_classifier}
train[snakemake.rule](snakemake.params.recipe, snakemake.output[0])
