from ldmprobe import jobs
from ldmprobe.intervention import jobs as intervention

jobs.setup_job(snakemake.log[0], snakemake.threads)
intervention.intervene(
    model=snakemake.params.model,
    allow_download=snakemake.params.allow_download,
    generation={**snakemake.params.generation, "device": snakemake.params.device},
    intervention=snakemake.params.intervention,
    task=snakemake.wildcards.task,
    condition=snakemake.wildcards.condition,
    image=snakemake.params.image,
    layers_path=snakemake.input.layers,
    label_path=snakemake.input.label,
    probes=dict(zip(snakemake.params.probe_keys, snakemake.input.probes, strict=True)),
    out_dir=snakemake.output[0],
)
