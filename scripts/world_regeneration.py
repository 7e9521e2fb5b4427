from ldmprobe import jobs
from ldmprobe.world.quality import write_regeneration_fidelity

jobs.setup_job(snakemake.log[0], snakemake.threads)
write_regeneration_fidelity(
    [
        {**key, "path": path, "meta": meta}
        for key, path, meta in zip(
            snakemake.params.images, snakemake.input.images, snakemake.input.records, strict=True
        )
    ],
    snakemake.output.per_image,
    snakemake.output.summary,
)
