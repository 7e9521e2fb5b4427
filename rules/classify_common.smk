# Parse-time part of the classification experiment (rules/classify.smk): its prompt table
# with the target ImageNet class of every row, and helpers of its rules.
from ldmprobe.classification.prompts import load_classification_prompts

CLASSIFICATION = CONFIG["classification"]
CLASSIFY = f"{RESULTS}/classification"
CLASSIFY_PROMPTS = None
if CLASSIFICATION["enabled"]:
    try:
        CLASSIFY_PROMPTS = load_classification_prompts(
            CLASSIFICATION["prompts"], workflow.basedir, CLASSIFICATION["classes"]
        )
    except PromptTableError as error:
        fail(error)


# (prompt id, seed) -> prompt and target class; the keys in the tables' order for batches.
CLASSIFY_ROWS = {}
CLASSIFY_KEYS = []
if CLASSIFY_PROMPTS is not None:
    CLASSIFY_KEYS = table_order(CLASSIFY_PROMPTS, CLASSIFICATION["prompts"]["files"])
    CLASSIFY_ROWS = {
        (row.prompt_id, int(row.seed)): {
            "prompt": row.prompt,
            "class_index": int(row.class_index),
        }
        for row in CLASSIFY_PROMPTS.itertuples()
    }


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


# The study's generation settings (less the untracked device); only the preview kinds differ,
# and no activations are kept.
CLASSIFY_GENERATION = {
    **without(CONFIG["generation"], "cfg_half", "device"),
    "previews": CLASSIFICATION["preview_kinds"],
}
