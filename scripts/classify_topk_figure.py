from ldmprobe import jobs
from ldmprobe.classification.jobs import topk_figure_job

jobs.setup_job(snakemake.log[0], snakemake.threads)
topk_figure_job(
    topk_path=snakemake.input.topk,
    curves_path=snakemake.input.curves,
    previews=snakemake.input.previews,
    image=snakemake.input.image,
    prompt=snakemake.params.prompt,
    seed=int(snakemake.wildcards.seed),
    note=snakemake.params.note,
    out_path=snakemake.output[0],
)
