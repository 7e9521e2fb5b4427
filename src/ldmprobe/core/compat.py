"""Keep torchvision importable when its compiled ops do not match the installed torch.

The registry's torchvision 0.28.0 is a CUDA build; next to the CPU torch its ``_C`` library
fails to load and ``import torchvision`` then raises ``operator torchvision::nms does not
exist`` (timm and transformers' image processors import it). Defining the two op schemas
that torchvision registers fake kernels for lets the import succeed. The ops' kernels stay
unavailable; nothing in this project uses ``torchvision.ops``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_patched = False


def ensure_torchvision_importable() -> None:
    global _patched
    if _patched:
        return
    _patched = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    libraries = sorted(Path(spec.origin).parent.glob("_C*.so"))
    try:
        for library in libraries:
            torch.ops.load_library(str(library))
        if libraries:
            return
    except (OSError, RuntimeError):
        pass
    fake_schemas = torch.library.Library("torchvision", "DEF")
    fake_schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    fake_schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARIES.append(fake_schemas)


# A torch.library.Library unregisters its definitions when garbage-collected.
_LIBRARIES: list = []
