"""What an intervention run edits, read by the workflow at parse time (no torch): the edited
layers and steps (Chen et al.'s defaults per task: ``generation.reads.TASK_DEFAULTS``), the
conditions that run, the test images.
"""

from __future__ import annotations

from ..backbones.layers import Layer, select_layers
from ..generation.reads import edited_selection
from .conditions import CONDITIONS, DEPTH2IMG, EXPERIMENT


class PlanError(ValueError):
    """The intervention section asks for something this model or study cannot give."""


def edited_cells(section: dict, layers: list[Layer], calls: int) -> tuple[list[str], list[int]]:
    """Names of the edited layers and the edited steps (``section``: config ``intervention``)."""
    patterns, steps = edited_selection(section)
    try:
        chosen = select_layers(layers, patterns)
    except ValueError as error:
        raise PlanError(f"config key 'intervention.layers': {error}") from error
    late = [step for step in steps if step >= calls]
    if late:
        raise PlanError(
            f"config key 'intervention.steps': {late} out of range; this schedule makes {calls} "
            f"denoiser calls (steps 0..{calls - 1})"
        )
    return [layer.name for layer in chosen], sorted(set(steps))


def conditions(section: dict, permuted: list[str] | None, edited: list[str]) -> list[str]:
    """The experiment and its controls, then depth2img when enabled. ``permuted``: the layers
    the permuted-U-Net control captured (None: it did not run); its probe condition needs every
    edited layer among them."""
    names = [EXPERIMENT]
    for name in section["controls"]:
        if CONDITIONS[name].probe == "permuted":
            if permuted is None:
                continue  # the control did not run: nothing to compare with
            missing = sorted(set(edited) - set(permuted))
            if missing:
                raise PlanError(
                    "config key 'intervention.controls': permuted-probe needs the permuted "
                    f"U-Net's probes of the edited layers, but controls.permuted_unet.layers "
                    f"leaves out {missing}; add them there or drop permuted-probe"
                )
        names.append(name)
    if section.get("depth2img", {}).get("enabled"):
        names.append(DEPTH2IMG)
    return names


def test_images(keys: list[tuple[str, int]], splits: dict[tuple[str, int], str], count: int):
    """The first ``count`` test images in table order (``keys``), as (prompt_id, seed)."""
    test = [key for key in keys if splits[key] == "test"]
    if not test:
        raise PlanError("intervention: the prompt table has no test images to edit")
    return test[:count]
