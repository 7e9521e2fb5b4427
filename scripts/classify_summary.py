from ldmprobe import jobs
from ldmprobe.classification.jobs import summary_job

jobs.setup_job(snakemake.log[0], snakemake.threads)
summary_job(
    curves_paths=list(snakemake.input.curves),
    top_k=snakemake.params.top_k,
    metrics=snakemake.params.metrics,
    first_path=snakemake.output.first,
    final_path=snakemake.output.final,
    summary_path=snakemake.output.summary,
)
