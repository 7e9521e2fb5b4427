from ldmprobe import jobs
from ldmprobe.world.quality import write_fit_faithfulness

jobs.setup_job(snakemake.log[0], snakemake.threads)
write_fit_faithfulness(
    [
        {**key, "path": path}
        for key, path in zip(snakemake.params.images, snakemake.input.images, strict=True)
    ],
    snakemake.params.thresholds,
    snakemake.output.per_image,
    snakemake.output.summary,
)
