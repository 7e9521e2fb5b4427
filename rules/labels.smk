# One job per (image, task): the labeler on the final image and on every step's preview.
rule label:
    input:
        image=f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/image.png",
        previews=f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/previews",
        model=lambda wildcards: model_input(
            CONFIG["labels"]["tasks"][wildcards.task]["model"]
        ),
    output:
        f"{RESULTS}/labels/{{task}}/{{prompt_id}}/{{seed}}.npz",
    log:
        f"{LOGS}/label/{{task}}/{{prompt_id}}/{{seed}}.log",
    conda:
        "../envs/labels.yaml"
    resources:
        gpu=gpu_count(CONFIG["labels"]["device"]),
    params:
        task=lambda wildcards: CONFIG["labels"]["tasks"][wildcards.task],
        allow_download=ALLOW_DOWNLOAD,
        device=CONFIG["labels"]["device"],
        batch_size=CONFIG["labels"]["batch_size"],
    script:
        "../scripts/label.py"
