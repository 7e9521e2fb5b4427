# One job per (image, task), or per (batch of images_per_job images, task): the labeler on the
# final image and on every step's preview, or the task's `previews` labeler on the previews when
# it has one (rules made in rules/images.smk). A labeler that labels by the image's generation
# record (Labeler.reads_record) gets each image's meta.json too.
IMAGE_STAGES.append(
    ImageStage(
        stage="label",
        keys=PROMPT_KEYS,
        log_folder=f"{LOGS}/label/{{task}}",
        device=CONFIG["labels"]["device"],
        fields=lambda prompt_id, seed: dict(prompt_id=prompt_id, seed=seed),
        environment="../envs/labels.yaml",
        entry_point="label.py",
        settings=dict(
            task=lambda wildcards: CONFIG["labels"]["tasks"][wildcards.task],
            allow_download=untracked(ALLOW_DOWNLOAD),
            device=untracked(CONFIG["labels"]["device"]),
            batch_size=untracked(CONFIG["labels"]["batch_size"]),
        ),
        inputs={
            "image": f"{GENERATION_DIR}/image.png",
            "previews": f"{GENERATION_DIR}/previews",
        },
        # The generation's record of each image (prompt, seed, start), for a labeler that
        # labels by it (the `world` labeler's scene: render); the other tasks' jobs do not read
        # it, so their inputs are as before.
        optional_inputs={
            "meta": (
                f"{GENERATION_DIR}/meta.json",
                lambda wildcards: task_reads_record(
                    wildcards.task, CONFIG["labels"]["tasks"][wildcards.task]
                ),
            )
        },
        model=lambda wildcards: label_model_inputs(wildcards.task),
        outputs={"labels": f"{RESULTS}/labels/{{task}}/{{prompt_id}}/{{seed}}.npz"},
    )
)
