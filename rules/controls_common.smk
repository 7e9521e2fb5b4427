# Parse-time part of the controls and the emergence stage (config keys `controls`,
# `metrics.emergence_fraction`): which sources are probed on which grid, and their outputs.
# Each source's facts are declared once, in ldmprobe.generation.sources.
from ldmprobe.generation.sources import PERMUTED, VAE, named, probed

SOURCES = probed(CONFIG, BACKBONE.kind)


def source_grid(source):
    """(layers, steps) probed for a source; a control's null layers/steps follow probe.*."""
    layers, steps = probe_grid()
    declared = named(source)
    if declared.control is None:
        return layers, steps
    key = f"controls.{declared.control}"
    section = CONFIG["controls"][declared.control]
    n_calls = layer_table()["unet_calls"]
    if section["steps"] == "all":
        steps = list(range(n_calls))
    elif section["steps"] is not None:
        steps = sorted(section["steps"])
        if steps[-1] >= n_calls:
            fail(
                f"config key '{key}.steps': {steps} out of range; "
                f"this schedule makes {n_calls} U-Net calls (steps 0..{n_calls - 1})"
            )
    if declared.layer is not None:
        return [declared.layer["name"]], steps
    if section.get("layers") is not None:
        from ldmprobe.backbones.layers import Layer, select_layers

        table = [Layer(**entry) for entry in layer_table()["layers"]]
        try:
            layers = [layer.name for layer in select_layers(table, section["layers"])]
        except ValueError as error:
            fail(f"config key '{key}.layers': {error}")
    return layers, steps


def all_cell_files(name):
    return [
        f"{RESULTS}/probes/{source}/{layer}/step{step}/{name}"
        for source in SOURCES
        for layers, steps in [source_grid(source)]
        for layer in layers
        for step in steps
    ]


def scaling_settings():
    """Per task, the probe settings that fix the target scaling (all the labeler scores use)."""
    keys = ("target_scaling", "target_mean", "target_std")
    return {
        task: {key: value for key, value in settings.items() if key in keys}
        for task, settings in probe_settings(CONFIG).items()
    }


def generation_controls():
    """The controls that change what generation writes; disabled ones stay out of the params
    so that switching a control off or on reruns generation only when it has to."""
    controls = CONFIG["controls"]
    chosen = {}
    permuted = controls[PERMUTED.control]
    if permuted["enabled"]:
        layers = permuted["layers"] or CONFIG["probe"]["layers"]
        chosen[PERMUTED.control] = {
            "enabled": True,
            "seed": permuted["seed"],
            "layers": layers,
        }
    vae = controls[VAE.control]
    if vae["enabled"]:
        chosen[VAE.control] = {"enabled": True, "latent": vae["latent"]}
    return chosen


def emergence_outputs():
    """The emergence tables and, per task and metric, probe vs labeler vs controls."""
    return [
        f"{RESULTS}/tables/emergence_comparison.csv",
        *[
            f"{RESULTS}/figures/comparison/{task}-{metric}.png"
            for task in TASK_NAMES
            for metric in TASKS[task].metrics
        ],
    ]
