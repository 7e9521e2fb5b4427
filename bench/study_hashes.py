"""sha256 of every output of a tiny study that a refactor must leave byte-identical.

Runs the tiny study of ``tests/workflow.py`` (SD 1.x demo model, saliency and depth, the
permuted, VAE and latent controls, the VGG-16 experiment, two images per job) in a working
directory and writes ``{path: sha256}`` of the stores' chunk files and metadata, generation
metadata, labels, probe outputs and tables. ``--compare`` names a file written before and lists
every path whose bytes differ, or that one side lacks.

    PYTHONPATH=src .venv/bin/python bench/study_hashes.py WORKDIR OUT.json [--compare BEFORE.json]

Logs, the report, figures (matplotlib embeds nothing variable, but a font cache may differ) and
Snakemake's own files are left out. A ``.safetensors`` file is hashed with its header's keys
sorted: safetensors writes its metadata map in an order that varies from process to process
(the same tensors and metadata saved in four processes gave two different files), so its bytes
differ between two runs of the same code. ``--no-run`` hashes an existing WORKDIR.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from workflow import run_snakemake, tiny_config  # noqa: E402

SKIPPED = ("logs", "figures", "report")


def study(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    demo = __import__("yaml").safe_load(
        (Path(__file__).resolve().parents[1] / "config/demo.yaml").read_text()
    )
    tasks = {name: demo["labels"]["tasks"][name] for name in ("saliency", "depth")}
    # The position control is new with the backbone seam: off, so both sides run one study.
    config = tiny_config(
        workdir,
        labels__tasks=tasks,
        classification__enabled=True,
        images_per_job=2,
        controls__position={"enabled": False},
    )
    run_snakemake(workdir, config, timeout=3600)
    return workdir / "results"


def hashes(results: Path) -> dict[str, str]:
    out = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results)
        if not path.is_file() or relative.parts[0] in SKIPPED:
            continue
        if path.suffix in {".png", ".html", ".log"}:
            continue
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            data = canonical_safetensors(data)
        out[str(relative)] = hashlib.sha256(data).hexdigest()
    return out


def canonical_safetensors(data: bytes) -> bytes:
    """The file with its JSON header's keys (and the metadata's) in sorted order."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return json.dumps(header, sort_keys=True).encode() + data[8 + size :]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--no-run", action="store_true")
    args = parser.parse_args()
    found = hashes(args.workdir / "results" if args.no_run else study(args.workdir))
    args.out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"{len(found)} files hashed -> {args.out}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sorted(k for k in before.keys() & found.keys() if before[k] != found[k])
        only = sorted(before.keys() ^ found.keys())
        print(
            f"{len(before.keys() & found.keys())} common, {len(differ)} differ, "
            f"{len(only)} on one side only"
        )
        for key in differ + only:
            print("  ", key)
        sys.exit(1 if differ or only else 0)


if __name__ == "__main__":
    main()
