"""Prompt tables of the known-answer world: captions of rendered scenes.

Row ``i`` is scene ``i`` of ``data_seed`` (held out from training, whose scenes come from the
recipe's own data seed), its caption as the prompt and ``i`` as the seed: route (a) draws from
the noise of seed ``i``; route (b) (``generation.start: world-inversion``) inverts the render
of scene ``i``, which checks that the prompt is its caption.

    python -m ldmprobe.world.prompts config/world_prompts.csv --data-seed 1 --count 160
"""

from __future__ import annotations

import argparse

from .. import scenes
from ..core.io import atomic_file

SPLITS = (("train", 0.5), ("val", 0.125), ("test", 0.375))


def prompt_rows(data_seed: int, count: int) -> list[dict]:
    bounds, total = [], 0.0
    for name, fraction in SPLITS:
        total += fraction
        bounds.append((round(total * count), name))
    rows = []
    for i in range(count):
        scene = scenes.sample_scene(scenes.scene_rng(data_seed, i))
        split = next(name for bound, name in bounds if i < bound)
        rows.append(
            {
                "prompt_id": f"scene{i:04d}",
                "prompt": scenes.caption(scene),
                "seed": i,
                "split": split,
            }
        )
    return rows


def write_prompt_table(path: str, data_seed: int, count: int) -> None:
    import csv

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt_id", "prompt", "seed", "split"])
        writer.writeheader()
        writer.writerows(prompt_rows(data_seed, count))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=160)
    args = parser.parse_args()
    write_prompt_table(args.path, args.data_seed, args.count)
