"""The edit and its controls, each run with the same layers, steps, optimiser and budget.

* ``probe``: the trained probe, translated target (the experiment).
* ``random-probe``: a random probe with the trained probe's norm, translated target: does any
  direction of that size move the object, or the one the probe found?
* ``permuted-probe``: the permuted U-Net's probe of the same (layer, step), translated target
  (only when the permuted-U-Net control ran): a probe that read a network without the
  representation.
* ``identity``: the trained probe, untranslated target: the procedure's own damage.

The workflow reads the table at parse time: torch only inside functions.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .optimise import EditProbe


@dataclass(frozen=True)
class Condition:
    name: str
    probe: str  # "trained", "random" or "permuted": which probe the edit goes through
    translate: bool  # False: the target is the untranslated label


CONDITIONS = {
    condition.name: condition
    for condition in (
        Condition("probe", "trained", True),
        Condition("random-probe", "random", True),
        Condition("permuted-probe", "permuted", True),
        Condition("identity", "trained", False),
    )
}
EXPERIMENT = "probe"


def random_probe(trained: EditProbe, seed: int, layer: str, step: int) -> EditProbe:
    """A probe of the trained one's shape with Gaussian parameters (weight and bias drawn as one
    vector) rescaled to the trained parameters' norm. Fixed by (seed, layer, step), like a
    trained probe, so every image and trial of a cell is edited through the same random probe."""
    import torch

    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{layer}:{step}".encode()))
    result = copy.deepcopy(trained)
    parameters = list(result.probe.parameters())
    with torch.no_grad():
        norm = torch.cat([p.float().flatten() for p in parameters]).norm()
        values = torch.randn(sum(p.numel() for p in parameters), generator=generator)
        values *= norm / values.norm()
        for parameter, part in zip(
            parameters, values.split([p.numel() for p in parameters]), strict=True
        ):
            parameter.copy_(part.view_as(parameter))
    return result
