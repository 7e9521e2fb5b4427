"""The version of this package that made an output, recorded in every output.

Snakemake reruns a job when its rule's script changes, but not when this package's code does
(README, "When outputs are remade"), so an output has to say which code made it. The version
is the package's release number plus a digest of its source files: two outputs with the same
version were made by the same code, uncommitted edits included.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The key (JSON, safetensors metadata, PNG text chunk, Zarr attribute) or column (CSV) that
# holds it.
VERSION_KEY = "ldmprobe_version"

# The whole package: this module is in its core/ subpackage.
PACKAGE = Path(__file__).resolve().parents[1]


@cache
def package_version() -> str:
    """``<release>+src.<12 hex digits>``: the release and a SHA-256 over the package's
    ``.py`` and ``.yaml`` files (their paths inside the package and contents)."""
    try:
        release = version("ldmprobe")
    except PackageNotFoundError:
        release = "unknown"
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".yaml") and path.is_file():
            digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return f"{release}+src.{digest.hexdigest()[:12]}"


def png_text() -> dict[str, str]:
    """The text chunk a PNG output carries (matplotlib's ``metadata``, PIL's ``PngInfo``)."""
    return {VERSION_KEY: package_version()}


def png_info():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in png_text().items():
        info.add_text(key, value)
    return info
