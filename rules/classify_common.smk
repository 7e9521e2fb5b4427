# Parse-time part of the classification experiment (rules/classify.smk): its prompt table
# with the target ImageNet class of every row, and helpers of its rules.
from ldmprobe.classify import load_classification_prompts

CLASSIFICATION = CONFIG["classification"]
CLASSIFY = f"{RESULTS}/classification"
CLASSIFY_PROMPTS = None
if CLASSIFICATION["enabled"]:
    try:
        CLASSIFY_PROMPTS = load_classification_prompts(
            CLASSIFICATION["prompts"], workflow.basedir
        )
    except PromptTableError as error:
        fail(error)


def classification_row(wildcards):
    rows = CLASSIFY_PROMPTS[
        (CLASSIFY_PROMPTS.prompt_id == wildcards.prompt_id)
        & (CLASSIFY_PROMPTS.seed == int(wildcards.seed))
    ]
    return rows.iloc[0]


def classification_images(pattern):
    return [
        pattern.format(prompt_id=p, seed=s)
        for p, s in zip(CLASSIFY_PROMPTS.prompt_id, CLASSIFY_PROMPTS.seed)
    ]


def classification_outputs():
    if not CLASSIFICATION["enabled"]:
        return []
    return [
        f"{CLASSIFY}/tables/summary.csv",
        f"{CLASSIFY}/figures/first_correct.png",
        *classification_images(f"{CLASSIFY}/figures/topk/{{prompt_id}}/{{seed}}.png"),
    ]


def random_weights_note():
    models = (CONFIG["models"]["diffusion"], CLASSIFICATION["model"])
    if any(built_by_workflow(model) for model in models):
        return "random-weight demo models: the numbers mean nothing"
    return ""


# The study's generation settings; only the preview kinds differ, and no activations are kept.
CLASSIFY_GENERATION = {
    **{key: value for key, value in CONFIG["generation"].items() if key != "cfg_half"},
    "previews": CLASSIFICATION["preview_kinds"],
}
