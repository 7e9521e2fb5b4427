from ldmprobe import jobs
from ldmprobe.classify import first_correct_figure_job

jobs.setup_logging(snakemake.log[0])
first_correct_figure_job(
    first_path=snakemake.input.first,
    summary_path=snakemake.input.summary,
    # One path when classification.compare_with_probes is set, else an empty list.
    emergence_path=snakemake.input.emergence or None,
    note=snakemake.params.note,
    out_path=snakemake.output[0],
)
