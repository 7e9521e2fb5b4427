# The one script of every per-image stage's rules (rules/images.smk writes those rules once, so
# their script path is one constant): runs the stage's own script, the rule's entry_point
# param, beside this one, with this job's `snakemake` object.
import runpy
from pathlib import Path

runpy.run_path(
    str(Path(snakemake.scriptdir) / snakemake.params.entry_point),
    init_globals={"snakemake": snakemake},
    run_name="__main__",
)
