from ldmprobe import jobs
from ldmprobe.classify import classify_job

jobs.setup_job(snakemake.log[0], snakemake.threads)
classify_job(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    device=snakemake.params.device,
    batch_size=snakemake.params.batch_size,
    top_k=snakemake.params.top_k,
    kinds=snakemake.params.kinds,
    target=snakemake.params.target,
    prompt_id=snakemake.wildcards.prompt_id,
    seed=int(snakemake.wildcards.seed),
    image=snakemake.input.image,
    previews=snakemake.input.previews,
    meta=snakemake.input.meta,
    topk_path=snakemake.output.topk,
    curves_path=snakemake.output.curves,
)
