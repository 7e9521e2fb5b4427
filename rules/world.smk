# The known-answer world's latent diffusion model (issue 15), trained from scratch on rendered
# scenes: VAE, cached latents, then U-Net and text encoder, saved as a StableDiffusionPipeline
# folder that generation loads as it loads SD. Not part of `all`: `make world-weights`
# retrains it with the world's labelers. Checkpoints under work_dir let an interrupted run resume.
from ldmprobe.world.train import Recipe

WORLD = CONFIG["world"]
WORLD_WORK = WORLD["work_dir"]

try:
    Recipe.from_dict(WORLD["diffusion"])
except (TypeError, ValueError) as error:
    fail(error)


rule world_vae:
    output:
        directory(f"{WORLD_WORK}/vae"),
    log:
        f"{LOGS}/world/vae.log",
    conda:
        "../envs/generate.yaml"
    threads: WORLD["threads"]
    resources:
        **device_resources(WORLD["device"]),
    params:
        recipe=WORLD["diffusion"],
        checkpoint=f"{WORLD_WORK}/checkpoints/vae.pt",
        device=untracked(WORLD["device"]),
    script:
        "../scripts/world_vae.py"


rule world_latents:
    input:
        rules.world_vae.output,
    output:
        f"{WORLD_WORK}/latents.npz",
    log:
        f"{LOGS}/world/latents.log",
    conda:
        "../envs/generate.yaml"
    threads: WORLD["threads"]
    resources:
        **device_resources(WORLD["device"]),
    params:
        recipe=WORLD["diffusion"],
        device=untracked(WORLD["device"]),
    script:
        "../scripts/world_latents.py"


rule world_diffusion:
    input:
        vae=rules.world_vae.output[0],
        latents=rules.world_latents.output[0],
    output:
        directory(f"{WORLD_WEIGHTS}/diffusion"),
    log:
        f"{LOGS}/world/diffusion.log",
    conda:
        "../envs/generate.yaml"
    threads: WORLD["threads"]
    resources:
        **device_resources(WORLD["device"]),
    params:
        recipe=WORLD["diffusion"],
        checkpoint=f"{WORLD_WORK}/checkpoints/diffusion.pt",
        device=untracked(WORLD["device"]),
    script:
        "../scripts/world_diffusion.py"


# Every model of the world: the diffusion model and rules/world_labelers.smk's.
rule world_weights:
    input:
        rules.world_diffusion.output,
        rules.world_labeler.output,
        rules.world_classifier.output,
        rules.world_spec.output,
