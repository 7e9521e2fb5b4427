"""The package's folders read like the workflow's DAG, and imports go one way: down.

``LEVELS`` orders the parts of ``src/ldmprobe`` (its subpackages and its top-level modules),
lowest first. A module may import from its own part and from parts of a lower level, never from
a higher level nor from a sibling of its own level. Every import counts: absolute or relative,
at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ldmprobe"

LEVELS: list[tuple[str, ...]] = [
    ("core",),  # config and schema, prompts, tasks, metrics, batches, io, provenance, compat
    ("backbones",),  # the model-family seam: adapters, trace, layer discovery, noise schedule
    ("models",),  # resolving and loading models, weight-file checks, the demo's tiny models
    ("scenes",),  # the known-answer world: renderer, blob fit, its networks' definitions
    ("generation",),  # generation jobs, the activation store, sources and reads, DDIM inversion
    ("labels",),  # labels and the labeler plugins
    ("probing",),  # the dataset manifest, probes, one cell's training and metrics
    ("reporting",),  # tables, emergence, figures
    ("classification", "intervention"),  # experiments on the probed study
    ("world",),  # the known-answer world experiment (measures its classifier like classification)
    ("jobs", "preflight"),  # what the workflow's scripts and Snakefile call
]
LEVEL = {part: index for index, parts in enumerate(LEVELS) for part in parts}


def part_of(path: Path, package: Path) -> str | None:
    """The part a file belongs to: its subpackage, or its own name at the top (None: the
    package's ``__init__``)."""
    relative = path.relative_to(package)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return None if relative.stem == "__init__" else relative.stem


def imported_parts(path: Path, package: Path) -> list[tuple[int, str | None]]:
    """(line, part) of every import of this package in the file; None: the package root."""
    relative = path.relative_to(package.parent).with_suffix("")
    inside = list(relative.parts[:-1])  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = inside[: len(inside) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            modules = [[module, alias.name] for alias in node.names]
        else:
            continue
        for names in modules:
            dotted = names[0].split(".")
            if dotted[0] != package.name:
                continue
            if len(dotted) > 1:
                found.append((node.lineno, dotted[1]))
            elif len(names) > 1 and names[1] in LEVEL:
                found.append((node.lineno, names[1]))  # from ldmprobe import jobs
            else:
                found.append((node.lineno, None))  # from ldmprobe import __version__
    return found


def violations(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        part = part_of(path, package)
        where = path.relative_to(package)
        if part is not None and part not in LEVEL:
            found.append(f"{where}: {part!r} is in no level of LEVELS")
            continue
        for line, target in imported_parts(path, package):
            if target == part or (target is None and part is not None):
                continue  # its own part, or the root's __version__
            if part is None:
                found.append(f"{where}:{line}: the package root imports {target!r}")
            elif target not in LEVEL:
                found.append(f"{where}:{line}: imports {target!r}, which is in no level")
            elif LEVEL[target] >= LEVEL[part]:
                side = "a sibling" if LEVEL[target] == LEVEL[part] else "a higher level"
                found.append(f"{where}:{line}: {part!r} imports {target!r}, {side}")
    return found


def test_imports_go_down_the_levels():
    assert violations(PACKAGE) == []


def test_every_part_of_the_package_is_in_a_level():
    parts = {part_of(path, PACKAGE) for path in PACKAGE.rglob("*.py")} - {None}
    assert parts == set(LEVEL)


def test_an_upward_import_is_caught(tmp_path):
    package = tmp_path / "ldmprobe"
    for folder in ("core", "generation", "labels"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text('__version__ = "0"\n')
    (package / "core" / "io.py").write_text("def f():\n    from ..labels import x\n")
    (package / "generation" / "reads.py").write_text(
        "from ldmprobe.core import io\nfrom .. import __version__\nimport ldmprobe.labels.y\n"
    )
    (package / "labels" / "plugins.py").write_text("from ..generation import reads\n")
    assert violations(package) == [
        "core/io.py:2: 'core' imports 'labels', a higher level",
        "generation/reads.py:3: 'generation' imports 'labels', a higher level",
    ]
