# The intervention's plan at parse time: which cells, conditions, probes and outputs.
from ldmprobe.intervention.plan import PlanError, conditions, edited_cells, test_images

INTERVENTION = CONFIG["intervention"]
INTERVENTION_TASK = INTERVENTION["task"]
INTERVENTION_DIR = (
    f"{RESULTS}/intervention/{{task}}/{{condition}}/{{prompt_id}}/{{seed}}"
)
if INTERVENTION["enabled"] and INTERVENTION_TASK not in TASK_NAMES:
    fail(
        f"config key 'intervention.task': {INTERVENTION_TASK!r} has no labels; "
        f"labels.tasks configures {TASK_NAMES}"
    )
try:
    INTERVENTION_IMAGES = test_images(
        PROMPT_KEYS,
        dict(zip(zip(PROMPTS.prompt_id, PROMPTS.seed), PROMPTS.split)),
        INTERVENTION["images"],
    )
except PlanError as error:
    INTERVENTION_IMAGES = []
    if INTERVENTION["enabled"]:
        fail(error)


def intervention_cells():
    """(edited layer names, edited steps), once the layer table is known."""
    table = layer_table()
    from ldmprobe.backbones.layers import Layer

    try:
        return edited_cells(
            INTERVENTION,
            [Layer(**entry) for entry in table["layers"]],
            table["unet_calls"],
        )
    except PlanError as error:
        fail(error)


def intervention_conditions():
    permuted = None
    if CONFIG["controls"]["permuted_unet"]["enabled"]:
        permuted = source_grid(PERMUTED.name(BACKBONE.kind))[0]
    try:
        return conditions(INTERVENTION, permuted, intervention_cells()[0])
    except PlanError as error:
        fail(error)


def intervention_probes(wildcards):
    """The probe file of every edited (layer, step), of the source the condition edits with."""
    from ldmprobe.intervention.conditions import CONDITIONS

    permuted = CONDITIONS[wildcards.condition].probe == "permuted"
    source = PERMUTED.name(BACKBONE.kind) if permuted else SOURCE
    layers, steps = intervention_cells()
    return [
        f"{RESULTS}/probes/{source}/{layer}/step{step}/probe.safetensors"
        for layer in layers
        for step in steps
    ]


def intervention_probe_keys(wildcards):
    layers, steps = intervention_cells()
    return [f"{layer}/{step}" for layer in layers for step in steps]


def intervention_scores(wildcards):
    return [
        f"{RESULTS}/intervention/{INTERVENTION_TASK}/{condition}/{prompt_id}/{seed}.scores.csv"
        for condition in intervention_conditions()
        for prompt_id, seed in INTERVENTION_IMAGES
    ]


def intervention_outputs():
    if not INTERVENTION["enabled"]:
        return []
    tables = f"{RESULTS}/tables/intervention"
    figures = f"{RESULTS}/figures/intervention"
    return [
        f"{tables}/{INTERVENTION_TASK}-summary.csv",
        f"{figures}/{INTERVENTION_TASK}-distributions.png",
        f"{figures}/{INTERVENTION_TASK}-success.png",
        f"{figures}/{INTERVENTION_TASK}-examples.png",
    ]
