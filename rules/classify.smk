# VGG-16 over the denoising steps (the UCSD study's second experiment): images of prompts that
# name ImageNet classes, every step's previews and the final image through an ImageNet
# classifier, then when the target class is first (and stays) top-1 / top-k.
# The images live under results/classification/ because their prompt table is not the probing
# study's, and they need xt previews but no activations.
include: "classify_common.smk"


rule classification:
    input:
        lambda wildcards: classification_outputs()
        or fail(
            "target 'classification' needs classification.enabled: true in the config"
        ),


CLASSIFY_DIR = f"{CLASSIFY}/generation/{{prompt_id}}/{{seed}}"
CLASSIFY_PREDICTIONS = f"{CLASSIFY}/predictions/{{prompt_id}}/{{seed}}"

# Per image (or batch of images): generation without activations, then the classifier on
# every preview and the final image (rules made in rules/images.smk).
IMAGE_STAGES.append(
    ImageStage(
        stage="classify_generate",
        keys=CLASSIFY_KEYS,
        log_folder=f"{LOGS}/classify_generate",
        device=CONFIG["generation"]["device"],
        fields=lambda prompt_id, seed: {
            "prompt": CLASSIFY_ROWS[(prompt_id, seed)]["prompt"],
            "seed": seed,
        },
        environment="../envs/generate.yaml",
        entry_point="classify_generate.py",
        settings={
            "model": CONFIG["models"]["diffusion"],
            "allow_download": untracked(ALLOW_DOWNLOAD),
            "generation": CLASSIFY_GENERATION,
            "device": untracked(CONFIG["generation"]["device"]),
        },
        model=model_input(CONFIG["models"]["diffusion"]),
        outputs={
            "image": f"{CLASSIFY_DIR}/image.png",
            "previews": f"{CLASSIFY_DIR}/previews",
            "latents": f"{CLASSIFY_DIR}/latents.zarr",
            "meta": f"{CLASSIFY_DIR}/meta.json",
        },
        directories=("previews", "latents"),
    )
)
IMAGE_STAGES.append(
    ImageStage(
        stage="classify",
        keys=CLASSIFY_KEYS,
        log_folder=f"{LOGS}/classify",
        device=CLASSIFICATION["device"],
        fields=lambda prompt_id, seed: {
            "prompt_id": prompt_id,
            "seed": seed,
            "target": CLASSIFY_ROWS[(prompt_id, seed)]["class_index"],
        },
        environment="../envs/labels.yaml",
        entry_point="classify.py",
        settings={
            "model": CLASSIFICATION["model"],
            "allow_download": untracked(ALLOW_DOWNLOAD),
            "device": untracked(CLASSIFICATION["device"]),
            "batch_size": untracked(CLASSIFICATION["batch_size"]),
            "top_k": CLASSIFICATION["top_k"],
            "kinds": CLASSIFICATION["preview_kinds"],
            "classes": CLASSIFICATION["classes"],
        },
        inputs={
            "image": f"{CLASSIFY_DIR}/image.png",
            "previews": f"{CLASSIFY_DIR}/previews",
            "meta": f"{CLASSIFY_DIR}/meta.json",
        },
        model=model_input(CLASSIFICATION["model"]),
        outputs={
            "topk": f"{CLASSIFY_PREDICTIONS}/topk.csv",
            "curves": f"{CLASSIFY_PREDICTIONS}/curves.csv",
        },
    )
)


rule classify_summary:
    input:
        curves=lambda wildcards: classification_images(
            f"{CLASSIFY}/predictions/{{prompt_id}}/{{seed}}/curves.csv"
        ),
    output:
        first=report(
            f"{CLASSIFY}/tables/first_correct.csv",
            caption="../report/classify_first_correct_table.rst",
            category="Classification",
            subcategory="tables",
        ),
        final=f"{CLASSIFY}/tables/final_images.csv",
        summary=report(
            f"{CLASSIFY}/tables/summary.csv",
            caption="../report/classify_summary.rst",
            category="Classification",
            subcategory="tables",
        ),
    log:
        f"{LOGS}/classify_summary.log",
    conda:
        "../envs/probes.yaml"
    params:
        top_k=CLASSIFICATION["top_k"],
        # Only the bootstrap's settings: other metrics keys must not rerun this job.
        metrics={
            key: CONFIG["metrics"][key]
            for key in ("bootstrap_resamples", "ci_level", "seed")
        },
        # For the caption only.
        note=random_weights_note(),
    script:
        "../scripts/classify_summary.py"


rule classify_topk_figure:
    input:
        topk=f"{CLASSIFY}/predictions/{{prompt_id}}/{{seed}}/topk.csv",
        curves=f"{CLASSIFY}/predictions/{{prompt_id}}/{{seed}}/curves.csv",
        previews=f"{CLASSIFY}/generation/{{prompt_id}}/{{seed}}/previews",
        image=f"{CLASSIFY}/generation/{{prompt_id}}/{{seed}}/image.png",
    output:
        report(
            f"{CLASSIFY}/figures/topk/{{prompt_id}}/{{seed}}.png",
            caption="../report/classify_topk.rst",
            category="Classification",
            subcategory="top-k over the steps",
            labels={"prompt": "{prompt_id}", "seed": "{seed}"},
        ),
    log:
        f"{LOGS}/classify_topk_figure/{{prompt_id}}/{{seed}}.log",
    conda:
        "../envs/report.yaml"
    params:
        prompt=lambda wildcards: CLASSIFY_ROWS[
            (wildcards.prompt_id, int(wildcards.seed))
        ]["prompt"],
        note=random_weights_note(),
    script:
        "../scripts/classify_topk_figure.py"


rule classify_first_correct_figure:
    input:
        first=f"{CLASSIFY}/tables/first_correct.csv",
        summary=f"{CLASSIFY}/tables/summary.csv",
        # The probes' emergence steps, drawn beside the classifier's when asked for.
        emergence=(
            [f"{RESULTS}/tables/emergence.csv"]
            if CLASSIFICATION["compare_with_probes"]
            else []
        ),
    output:
        report(
            f"{CLASSIFY}/figures/first_correct.png",
            caption="../report/classify_first_correct.rst",
            category="Classification",
            subcategory="first correct step",
        ),
    log:
        f"{LOGS}/classify_first_correct_figure.log",
    conda:
        "../envs/report.yaml"
    params:
        note=random_weights_note(),
    script:
        "../scripts/classify_first_correct_figure.py"
