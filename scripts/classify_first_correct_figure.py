from ldmprobe import jobs
from ldmprobe.classification.jobs import first_correct_figure_job

jobs.setup_job(snakemake.log[0], snakemake.threads)
# A list input: the one emergence table when classification.compare_with_probes is set, or empty.
emergence = list(snakemake.input.emergence)
first_correct_figure_job(
    first_path=snakemake.input.first,
    summary_path=snakemake.input.summary,
    emergence_path=emergence[0] if emergence else None,
    note=snakemake.params.note,
    out_path=snakemake.output[0],
)
