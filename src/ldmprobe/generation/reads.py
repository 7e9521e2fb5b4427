"""What the study reads from the activation stores, and so what generation writes.

Every consumer of stored activations declares here, in ``readers``, the (source, layers, steps)
it reads, in the config's own terms (layer patterns or ``all``, step lists or ``all``): the
probe grid, each enabled control and the intervention (whose edits go through the probes of
the cells it edits). A new consumer adds its entry there and nowhere else. Sources are named
by their role in ``sources.py`` (``denoiser``, ``permuted``, ``vae``), whatever the backbone.
``generation.store`` then says what generation writes:

* ``read`` (the default): the union of what the readers read, per source;
* ``all``: every layer at every step (the reference study's dump);
* ``{layers, steps}``: those, for every source; each reader must lie inside it
  (``check_stored``), else the run stops before any job with a message naming both keys.

The latent control reads ``latents/xt``, which every store holds whole (4 channels: small).
Torch-free: the Snakefile's parse imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import ConfigError
from .sources import DENOISER, PERMUTED, VAE


@dataclass(frozen=True)
class Selection:
    """Layers (patterns or "all") and steps (integers or "all") of one source."""

    layers: str | tuple[str, ...]
    steps: str | tuple[int, ...]

    def resolve_layers(self, layers: list) -> list[str]:
        """Names of the ``layers`` (``Layer`` objects, or names with ``all``) it selects;
        a pattern that matches no layer raises ValueError."""
        from ..backbones.layers import select_layers

        if self.layers == "all":
            return [getattr(layer, "name", layer) for layer in layers]
        return [layer.name for layer in select_layers(layers, list(self.layers))]

    def resolve_steps(self, n_calls: int) -> list[int]:
        return list(range(n_calls)) if self.steps == "all" else sorted(set(self.steps))

    def to_dict(self) -> dict:
        as_list = lambda value: value if value == "all" else list(value)  # noqa: E731
        return {"layers": as_list(self.layers), "steps": as_list(self.steps)}

    @classmethod
    def from_dict(cls, values: dict) -> Selection:
        return _selection(values["layers"], values["steps"])


@dataclass(frozen=True)
class Reader:
    key: str  # the config key that asks for it, for messages
    source: str
    selection: Selection


def _selection(layers, steps) -> Selection:
    as_tuple = lambda value: value if value == "all" else tuple(value)  # noqa: E731
    return Selection(as_tuple(layers), as_tuple(steps))


# The intervention's edited layers and steps are declared here, below it, because the store plan
# reads them (``intervention.plan`` imports them). Chen et al.: saliency edits the decoder's
# self-attention layers at steps 0-4, depth every layer at steps 0-2.
TASK_DEFAULTS = {
    "saliency": {"layers": ["up*"], "steps": [0, 1, 2, 3, 4]},
    "depth": {"layers": "all", "steps": [0, 1, 2]},
}


def edited_selection(section: dict) -> tuple[str | list[str], list[int]]:
    """The edited layer patterns (or "all") and steps, as the config or the task's defaults
    give them (``section``: config ``intervention``); ``readers`` declares them."""
    defaults = TASK_DEFAULTS[section["task"]]
    patterns = section["layers"] if section["layers"] is not None else defaults["layers"]
    steps = section["steps"] if section["steps"] is not None else defaults["steps"]
    return patterns, steps


def readers(config: dict) -> list[Reader]:
    """Every consumer of stored activations and what it reads (validated config)."""
    probe = config["probe"]
    found = [Reader("probe", DENOISER.role, _selection(probe["layers"], probe["steps"]))]
    controls = config["controls"]
    permuted = controls[PERMUTED.control]
    if permuted["enabled"]:
        layers = permuted["layers"] if permuted["layers"] is not None else probe["layers"]
        steps = permuted["steps"] if permuted["steps"] is not None else probe["steps"]
        selection = _selection(layers, steps)
        found.append(Reader(f"controls.{PERMUTED.control}", PERMUTED.role, selection))
    vae = controls[VAE.control]
    if vae["enabled"]:
        steps = vae["steps"] if vae["steps"] is not None else probe["steps"]
        found.append(Reader(f"controls.{VAE.control}", VAE.role, _selection("all", steps)))
    intervention = config["intervention"]
    if intervention["enabled"]:
        edited = _selection(*edited_selection(intervention))
        found.append(Reader("intervention", DENOISER.role, edited))
        if permuted["enabled"] and "permuted-probe" in intervention["controls"]:
            found.append(Reader("intervention", PERMUTED.role, edited))
    return found


def _union(values: list) -> str | tuple:
    if any(value == "all" for value in values):
        return "all"
    merged = []
    for value in values:
        merged += [item for item in value if item not in merged]
    return tuple(sorted(merged)) if all(isinstance(v, int) for v in merged) else tuple(merged)


def store_plan(config: dict) -> dict[str, Selection]:
    """Per source that generation writes (by role), the layers and steps it writes."""
    store = config["generation"]["store"]
    found = readers(config)
    # In the readers' order, so the generate jobs' param is the same in every process.
    sources = list(dict.fromkeys(reader.source for reader in found))
    if store == "all":
        return {source: Selection("all", "all") for source in sources}
    if store == "read":
        return {
            source: Selection(
                _union([r.selection.layers for r in found if r.source == source]),
                _union([r.selection.steps for r in found if r.source == source]),
            )
            for source in sources
        }
    # An explicit store's layer patterns name the denoiser's layers; the VAE control has one.
    return {
        source: _selection("all" if source == VAE.role else store["layers"], store["steps"])
        for source in sources
    }


def check_stored(config: dict, layers: list, n_calls: int) -> None:
    """Raise ConfigError when a reader asks for a (layer, step) that generation does not
    store; ``layers``: the denoiser's layers (``Layer`` objects, in execution order)."""
    plan = store_plan(config)
    for reader in readers(config):
        table = [VAE.layer["name"]] if reader.source == VAE.role else layers
        stored = plan[reader.source]
        want_steps, have_steps = (
            reader.selection.resolve_steps(n_calls),
            stored.resolve_steps(n_calls),
        )
        try:
            want_layers = reader.selection.resolve_layers(table)
            have_layers = stored.resolve_layers(table)
        except ValueError as error:
            raise ConfigError(
                f"config key '{reader.key}' or 'generation.store': {error}"
            ) from error
        missing_layers = [name for name in want_layers if name not in have_layers]
        missing_steps = [step for step in want_steps if step not in have_steps]
        if missing_layers or missing_steps:
            what = []
            if missing_layers:
                what.append(f"layers {missing_layers}")
            if missing_steps:
                what.append(f"steps {missing_steps}")
            raise ConfigError(
                f"config key '{reader.key}' reads {' and '.join(what)}, which config key "
                f"'generation.store' does not store (it stores layers {have_layers}, steps "
                f"{have_steps}); add them to generation.store (this reruns generation), set "
                f"generation.store: read, or read only what is stored"
            )
