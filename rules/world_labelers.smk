# The known-answer world's own models (issue 15): the dense labeler (saliency, depth, shading)
# and the object classifier, trained on renders, and the exact labeler's world definition.
# Their folders are committed under world.weights_dir; `snakemake <folders> --forcerun
# world_spec world_labeler world_classifier` retrains them from scratch (README).
from ldmprobe.scenes.nets import CLASSIFIER_DEFAULTS, recipe

# WORLD_WEIGHTS: rules/common.smk (models there are trained here only when absent).
try:
    WORLD_LABELER_RECIPE = recipe(CONFIG["world"]["labeler"])
    WORLD_CLASSIFIER_RECIPE = recipe(CONFIG["world"]["classifier"], CLASSIFIER_DEFAULTS)
except ValueError as error:
    fail(f"config key 'world': {error}")


rule world_spec:
    output:
        directory(f"{WORLD_WEIGHTS}/exact"),
    log:
        f"{LOGS}/world/spec.log",
    conda:
        "../envs/probes.yaml"
    script:
        "../scripts/world_spec.py"


# One thread each: two such jobs share two cores, and torch's thread pools stall when the
# machine is oversubscribed (15x slower per step measured at load 15 on 2 cores).
rule world_labeler:
    output:
        directory(f"{WORLD_WEIGHTS}/labeler"),
    log:
        f"{LOGS}/world/labeler.log",
    conda:
        "../envs/labels.yaml"
    threads: 1
    params:
        recipe=WORLD_LABELER_RECIPE,
    script:
        "../scripts/world_train.py"


rule world_classifier:
    output:
        directory(f"{WORLD_WEIGHTS}/classifier"),
    log:
        f"{LOGS}/world/classifier.log",
    conda:
        "../envs/labels.yaml"
    threads: 1
    params:
        recipe=WORLD_CLASSIFIER_RECIPE,
    script:
        "../scripts/world_train.py"


# The world models' accuracy against the exact truth of held-out renders, for the report:
# the trained models' (recorded in their RECIPE.json when they were made) and route (a)'s fit.
rule world_quality:
    input:
        labeler=f"{WORLD_WEIGHTS}/labeler",
        classifier=f"{WORLD_WEIGHTS}/classifier",
    output:
        report(
            f"{RESULTS}/world/model_quality.csv",
            caption="../report/world_quality.rst",
            category="World",
        ),
    log:
        f"{LOGS}/world/quality.log",
    conda:
        "../envs/probes.yaml"
    params:
        recipe=WORLD_LABELER_RECIPE,
    script:
        "../scripts/world_quality.py"


# Route (a)'s faithfulness on the generated images: the fitted scene's re-render against each
# image (mask IoU, PSNR), and which images each task's `world` labeler keeps.
rule world_fit_faithfulness:
    input:
        images=per_image(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/image.png"),
    output:
        per_image=f"{RESULTS}/world/fit_faithfulness.csv",
        summary=report(
            f"{RESULTS}/world/fit_faithfulness_summary.csv",
            caption="../report/world_fit.rst",
            category="World",
        ),
    log:
        f"{LOGS}/world/fit_faithfulness.log",
    conda:
        "../envs/probes.yaml"
    params:
        images=image_keys(),
        # The tasks labelled by the fit (not those of scene: render, route (b), none excluded).
        thresholds={
            task: section.get("options", {})
            for task, section in CONFIG["labels"]["tasks"].items()
            if section["labeler"] == "world"
            and section.get("options", {}).get("scene", "fit") == "fit"
        },
    script:
        "../scripts/world_fit.py"


# Route (b)'s fidelity: each image redrawn from the inversion of a render, against that render
# (whose exact maps label it): PSNR and palette-mask IoU.
rule world_regeneration_fidelity:
    input:
        images=per_image(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/image.png"),
        records=per_image(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/meta.json"),
    output:
        per_image=f"{RESULTS}/world/regeneration_fidelity.csv",
        summary=report(
            f"{RESULTS}/world/regeneration_fidelity_summary.csv",
            caption="../report/world_regeneration.rst",
            category="World",
        ),
    log:
        f"{LOGS}/world/regeneration_fidelity.log",
    conda:
        "../envs/probes.yaml"
    params:
        images=image_keys(),
    script:
        "../scripts/world_regeneration.py"
