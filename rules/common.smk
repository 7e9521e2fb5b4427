# Configuration, prompt table and helpers. This runs at parse time in every job (also in each
# cluster job), so it only reads small files: the config, the prompt table, model folders.
import json
import os
import re
from dataclasses import dataclass, field

from ldmprobe.backbones import get_backbone
from ldmprobe.core.batches import batch_paths, image_batches, table_order
from ldmprobe.core.config import ConfigError, probe_settings, validate_config
from ldmprobe.core.prompts import ID_PATTERN, PromptTableError, load_prompts
from ldmprobe.core.tasks import TASKS
from ldmprobe.generation.reads import check_stored, store_plan
from ldmprobe.generation.sources import DENOISER
from ldmprobe.labels import check_labelers, label_model_ref, task_reads_record
from ldmprobe.models import (
    DamagedModelError,
    MissingModelError,
    ModelRef,
    is_inside,
    preflight,
)
from ldmprobe.preflight import (
    DiskSpaceError,
    check_consistency,
    check_store,
    disk_preflight,
)


def fail(message):
    # One clear message, no traceback: the run stops before any job is scheduled.
    sys.stderr.write(f"\nldmprobe: {message}\n\n")
    sys.exit(1)


try:
    CONFIG = validate_config(config)
    check_consistency(CONFIG)
    PROMPTS = load_prompts(CONFIG["prompts"], workflow.basedir)
except (ConfigError, PromptTableError) as error:
    fail(error)

RESULTS = CONFIG["results"]
LOGS = f"{RESULTS}/logs"
DEMO_DIR = CONFIG["models"]["demo_dir"]
WORLD_WEIGHTS = CONFIG["world"]["weights_dir"]
ALLOW_DOWNLOAD = CONFIG["models"]["allow_download"]
TASK_NAMES = list(CONFIG["labels"]["tasks"])
# The denoiser's source name ("unet" for Stable Diffusion): its probes, figures and examples.
BACKBONE = get_backbone(CONFIG["models"]["diffusion"]["backbone"])
SOURCE = DENOISER.name(BACKBONE.kind)


wildcard_constraints:
    prompt_id=ID_PATTERN,
    seed=r"\d+",
    task="|".join(TASK_NAMES),
    layer=r"[A-Za-z0-9_.]+",
    step=r"\d+",
    source=r"[a-z0-9-]+",
    kind=r"[a-z0-9-]+",
    metric=r"[a-z]+",


def built_by_workflow(model):
    """Demo models are the workflow's own; the world's trained weights are committed, used as
    they are, and trained by the workflow (rules/world.smk) only when absent."""
    if DEMO_DIR is not None and is_inside(model["id"], DEMO_DIR):
        return True
    return is_inside(model["id"], WORLD_WEIGHTS) and not os.path.isdir(model["id"])


def model_refs():
    """(reference, config section) of every configured model; a labeler's reference names
    the files it reads from the folder and how to get them."""
    diffusion = CONFIG["models"]["diffusion"]
    refs = [(ModelRef.from_config("models.diffusion", diffusion), diffusion)]
    for task, section in CONFIG["labels"]["tasks"].items():
        refs.append((label_model_ref(task, section), section["model"]))
        if section.get("previews"):
            refs.append(
                (
                    label_model_ref(task, section, previews=True),
                    section["previews"]["model"],
                )
            )
    if CONFIG["classification"]["enabled"]:
        model = CONFIG["classification"]["model"]
        refs.append((ModelRef.from_config("classification.model", model), model))
    depth2img = CONFIG["intervention"]["depth2img"]
    if CONFIG["intervention"]["enabled"] and depth2img["enabled"]:
        refs.append(
            (
                ModelRef.from_config(
                    "intervention.depth2img.model", depth2img["model"]
                ),
                depth2img["model"],
            )
        )
    return refs


# One message for everything missing: labeler packages (with their install command) and models.
# Absent model folders are the one thing a dry run may go past (to show the DAG before the
# weights are fetched); missing packages and damaged weight files stop it too.
_missing = []
_absent_models = []
try:
    check_labelers(CONFIG["labels"]["tasks"])
except ConfigError as error:
    _missing.append(str(error))
try:
    preflight(
        [ref for ref, model in model_refs() if not built_by_workflow(model)],
        ALLOW_DOWNLOAD,
    )
except DamagedModelError as error:
    _missing.append(str(error))
except MissingModelError as error:
    _absent_models.append(str(error))


def dry_run():
    """Whether this is `snakemake -n` (also `-np`, `--dry-run`): Snakemake parses the Snakefile
    before it sets its executor, so the command line is what says so at parse time."""
    return any(
        arg in ("--dry-run", "--dryrun") or re.fullmatch(r"-[a-zA-Z]*n[a-zA-Z]*", arg)
        for arg in sys.argv[1:]
    )


if _absent_models and not _missing and dry_run():
    # A dry run builds the DAG up to the layer table without any weights: say what is missing,
    # and that a real run stops here.
    sys.stderr.write(
        "\nldmprobe: dry run without these models; a real run stops here:\n"
        + "\n".join(_absent_models)
        + "\n\n"
    )
elif _missing or _absent_models:
    fail("\n".join(_missing + _absent_models))
try:
    check_store(CONFIG)
except ConfigError as error:
    fail(error)


def store_params():
    """What the generate jobs write (generation.store resolved against the readers: the
    probe grid, the controls and the intervention): a param, so a change reruns generation.
    """
    return {
        source: selection.to_dict() for source, selection in store_plan(CONFIG).items()
    }


def untracked(value):
    """A param that decides how a job runs, not what it writes: where it computes (a device,
    `auto` resolving differently on a submit host and a GPU node), how many inputs it takes at
    once, whether it may download. Snakemake reruns a job whose params differ from those its
    outputs were made with; it leaves out params computed by a function of the job's
    `threads` (or input, output, resources), as derived from what it tracks itself, so a
    change of this value reruns nothing (`--forcerun <rule>` does, on purpose)."""
    return lambda wildcards, threads: value


def without(section, *keys):
    """A config section as a param, less its untracked keys."""
    return {key: value for key, value in section.items() if key not in keys}


def model_input(model):
    """The model folder as an input when this workflow builds it (demo), else nothing."""
    return [model["id"]] if built_by_workflow(model) else []


def label_model_inputs(task):
    """The label job's model inputs: the task's labeler's and its previews' labeler's."""
    section = CONFIG["labels"]["tasks"][task]
    inputs = model_input(section["model"])
    if section.get("previews"):
        inputs += model_input(section["previews"]["model"])
    return inputs


# Site settings of the GPU jobs, from the environment like the rest of the site settings
# (partition of the CPU jobs, account: profiles/slurm/config.yaml). They are the rules' own
# because a batch rule's name is not known to the profile.
GPU_PARTITION = os.environ.get("LDMPROBE_GPU_PARTITION", "gpu")
GPU_MODEL = os.environ.get("LDMPROBE_GPU_MODEL")


def gpu_resources(device, batch):
    """Resources of a per-image stage's job on its GPU (gpu 0 for a stage on `device: cpu`).
    Runtime: 8 minutes for the start and model load, 2 per image; memory and runtime grow with
    the attempt."""
    images = 1 if batch is None else len(batch.keys)
    resources = {
        "gpu": 0 if device == "cpu" else 1,
        "slurm_partition": GPU_PARTITION,
        "cpus_per_gpu": 4,
        "mem_mb": lambda wildcards, attempt: 16000 * attempt,
        "runtime": lambda wildcards, attempt: (8 + 2 * images) * attempt,
    }
    if GPU_MODEL:
        resources["gpu_model"] = GPU_MODEL
    return resources


def device_resources(device):
    """A job that computes on `device` (a probe cell, the world model's training): on the GPU
    partition with one GPU for auto or cuda, else on the CPU (gpu 0). Memory, runtime and
    threads: the profiles' settings for the rule."""
    if device == "cpu":
        return {"gpu": 0}
    resources = {"gpu": 1, "slurm_partition": GPU_PARTITION}
    if GPU_MODEL:
        resources["gpu_model"] = GPU_MODEL
    return resources


@dataclass
class ImageStage:
    """A per-image stage (generate, label, classify_generate, classify), declared in its own
    .smk; rules/images.smk makes its rules, one wildcard rule per image with images_per_job 1,
    else one rule per batch. ``inputs`` and ``outputs`` are per-image path patterns (those in
    ``directories`` are folders); ``model`` is the model input, as is; ``fields(prompt_id,
    seed)`` gives each image's entry of the rule's ``images`` param; ``optional_inputs``
    maps a name to (pattern, wanted): an input only of the jobs whose wildcards ``wanted``
    accepts, so the other jobs' input sets (which Snakemake reruns on) stay as they were; ``settings`` are the rest
    of its params; ``entry_point`` is its script under scripts/. (Field names avoid Snakemake's keywords, which snakefmt reads as such.)
    """

    stage: str
    keys: list
    log_folder: str
    device: str
    fields: object
    environment: str
    entry_point: str
    settings: dict
    outputs: dict
    inputs: dict = field(default_factory=dict)
    model: object = ()
    directories: tuple = ()
    optional_inputs: dict = field(default_factory=dict)

    def input_files(self, batch):
        files = {
            name: image_files(pattern, batch) for name, pattern in self.inputs.items()
        }
        for name, (pattern, wanted) in self.optional_inputs.items():
            files[name] = optional_files(image_files(pattern, batch), wanted)
        return {**files, "model": self.model}

    def output_files(self, batch):
        return {
            name: (directory(files) if name in self.directories else files)
            for name, pattern in self.outputs.items()
            for files in [image_files(pattern, batch)]
        }


IMAGE_STAGES = []


def image_rules(stage, keys):
    """Name and batch of each of a per-image stage's rules. With images_per_job 1, one
    wildcard rule named `stage` (batch None); else `stage`_batch<i> for each batch of the
    (prompt id, seed) keys."""
    if CONFIG["images_per_job"] == 1:
        return [(stage, None)]
    return [
        (f"{stage}_batch{batch.index}", batch)
        for batch in image_batches(keys, CONFIG["images_per_job"])
    ]


def image_files(pattern, batch):
    """A per-image path pattern: as is for the wildcard rule, else one path per image."""
    return pattern if batch is None else batch_paths(pattern, batch)


def optional_files(files, wanted):
    """An input function: ``files`` (a per-image pattern or a batch's paths) for the jobs whose
    wildcards ``wanted`` accepts, nothing for the others."""

    def inputs(wildcards):
        return expand(files, **wildcards) if wanted(wildcards) else []

    return inputs


def image_log(folder, batch):
    if batch is None:
        return f"{folder}/{{prompt_id}}/{{seed}}.log"
    return f"{folder}/batch{batch.index}.log"


def image_fields(fields, batch):
    """A rule's `images` param: fields(prompt_id, seed) of each of its images."""
    if batch is None:
        return lambda wildcards: [fields(wildcards.prompt_id, int(wildcards.seed))]
    return [fields(prompt_id, seed) for prompt_id, seed in batch.keys]


def image_group(batch):
    """On a cluster, 16 single-image jobs (profile's group-components) or one batch's jobs of
    every stage go to SLURM as one job; locally groups are ignored."""
    return "images" if batch is None else "image-batches"


# A dict, not a DataFrame filter per job: that made the DAG quadratic in the table's rows.
PROMPT_TEXT = dict(zip(zip(PROMPTS.prompt_id, PROMPTS.seed), PROMPTS.prompt))
# Batches follow the tables' own order, so appended rows leave the full batches alone.
PROMPT_KEYS = table_order(PROMPTS, CONFIG["prompts"]["files"])


def per_image(pattern):
    return [
        pattern.format(prompt_id=p, seed=s)
        for p, s in zip(PROMPTS.prompt_id, PROMPTS.seed)
    ]


def image_keys():
    """Every image's {prompt_id, seed}, in per_image's order (a job's params beside its inputs)."""
    return [
        {"prompt_id": p, "seed": s} for p, s in zip(PROMPTS.prompt_id, PROMPTS.seed)
    ]


def dataset_inputs(wildcards):
    """Every image's files, by manifest column name."""
    inputs = {
        "store": per_image(
            f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/activations.zarr"
        ),
        "image": per_image(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/image.png"),
        "meta": per_image(f"{RESULTS}/generation/{{prompt_id}}/{{seed}}/meta.json"),
    }
    for task in TASK_NAMES:
        inputs[TASKS[task].label_key] = per_image(
            f"{RESULTS}/labels/{task}/{{prompt_id}}/{{seed}}.npz"
        )
    return inputs


# Once per invocation, not in every job: room for the stores and labels not written yet.
if workflow.is_main_process:
    _pending = dataset_inputs(None)
    try:
        _space = disk_preflight(
            CONFIG,
            _pending["store"],
            [path for task in TASK_NAMES for path in _pending[TASKS[task].label_key]],
        )
    except DiskSpaceError as error:
        fail(error)
    sys.stderr.write(f"ldmprobe: {_space}\n")


def layer_table():
    """Layers and U-Net calls, known once the layer_table checkpoint has run."""
    with open(checkpoints.layer_table.get().output[0]) as handle:
        return json.load(handle)


def probe_grid():
    """(layer, step) cells selected by probe.layers and probe.steps."""
    from ldmprobe.backbones.layers import Layer, select_layers

    table = layer_table()
    layers = [Layer(**entry) for entry in table["layers"]]
    try:
        chosen = select_layers(layers, CONFIG["probe"]["layers"])
    except ValueError as error:
        fail(error)
    steps = CONFIG["probe"]["steps"]
    if steps == "all":
        steps = list(range(table["unet_calls"]))
    out_of_range = [step for step in steps if step >= table["unet_calls"]]
    if out_of_range:
        fail(
            f"config key 'probe.steps': {out_of_range} out of range; this schedule makes "
            f"{table['unet_calls']} U-Net calls (steps 0..{table['unet_calls'] - 1})"
        )
    try:
        check_stored(CONFIG, layers, table["unet_calls"])
    except ConfigError as error:
        fail(error)
    return [layer.name for layer in chosen], sorted(steps)


def figure_files():
    files = []
    for task in TASK_NAMES:
        for metric in TASKS[task].metrics:
            files.append(f"{RESULTS}/figures/heatmap/{task}-{metric}.png")
            files.append(f"{RESULTS}/figures/curves/{task}-{metric}.png")
        files.append(f"{RESULTS}/figures/examples/{task}.png")
    return files


def world_outputs():
    """Route (b)'s fidelity table, in a study whose images start from inverted renders."""
    if CONFIG["generation"]["start"]["kind"] != "world-inversion":
        return []
    return [f"{RESULTS}/world/regeneration_fidelity_summary.csv"]


def final_outputs(wildcards):
    # classification_outputs: rules/classify.smk (empty unless classification.enabled).
    return [
        f"{RESULTS}/tables/metrics.csv",
        f"{RESULTS}/tables/grid_ceiling.csv",
        *figure_files(),
        # emergence_outputs: rules/controls_common.smk (emergence tables, comparison figures).
        *emergence_outputs(),
        *classification_outputs(),
        # intervention_outputs: rules/intervention.smk (empty unless intervention.enabled).
        *intervention_outputs(),
        # world_outputs: above (empty unless the images start from renders).
        *world_outputs(),
    ]


def example_layer():
    layers, _steps = probe_grid()
    chosen = CONFIG["figures"]["example_layer"]
    return layers[-1] if chosen == "last" else chosen
