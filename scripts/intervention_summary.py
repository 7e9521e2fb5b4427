from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.summarise(
    scores=list(snakemake.input),
    metrics_config=snakemake.params.metrics,
    edits_path=snakemake.output.edits,
    summary_path=snakemake.output.summary,
)
