from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.figures(
    edits_path=snakemake.input.edits,
    task=snakemake.wildcards.task,
    success=snakemake.params.success,
    distributions_path=snakemake.output.distributions,
    success_path=snakemake.output.success,
)
