include: "controls_common.smk"


GENERATION_DIR = f"{RESULTS}/generation/{{prompt_id}}/{{seed}}"

# One job per (prompt id, seed), or per batch of images_per_job of them: image, previews,
# latents and self-attention activations (rules made in rules/images.smk).
IMAGE_STAGES.append(
    ImageStage(
        stage="generate",
        keys=PROMPT_KEYS,
        log_folder=f"{LOGS}/generate",
        device=CONFIG["generation"]["device"],
        fields=lambda prompt_id, seed: {
            "prompt": PROMPT_TEXT[(prompt_id, seed)],
            "seed": seed,
        },
        environment="../envs/generate.yaml",
        entry_point="generate.py",
        settings={
            "model": CONFIG["models"]["diffusion"],
            "allow_download": untracked(ALLOW_DOWNLOAD),
            "generation": without(CONFIG["generation"], "device"),
            "device": untracked(CONFIG["generation"]["device"]),
            "controls": generation_controls(),
            "store": store_params(),
            "prompt_encoding": CONFIG["prompts"]["encoding"],
        },
        model=model_input(CONFIG["models"]["diffusion"]),
        outputs={
            "image": f"{GENERATION_DIR}/image.png",
            "previews": f"{GENERATION_DIR}/previews",
            "store": f"{GENERATION_DIR}/activations.zarr",
            "meta": f"{GENERATION_DIR}/meta.json",
        },
        directories=("previews", "store"),
    )
)
