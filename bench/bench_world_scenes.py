"""The world's renderer and route (a)'s scene fit: milliseconds per image by image size.

The render size of the known-answer world is chosen by this measurement (issue 15): rendering
is a small share of training at any of these sizes; the fit runs once per generated image and
task label job (and on every preview), so its cost counts in the demo's time.
"""

from __future__ import annotations

import time

from benchlib import parser, record

from ldmprobe.scenes import render_dataset
from ldmprobe.scenes.fit import fit_scene


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    sizes = [32, 64] if args.tiny else [32, 64, 96, 128]
    count = 8 if args.tiny else 100
    for size in sizes:
        started = time.perf_counter()
        _, arrays = render_dataset(seed=0, count=count, size=size)
        render_ms = (time.perf_counter() - started) / count * 1000
        fits = min(count, 40)
        started = time.perf_counter()
        results = [fit_scene(image) for image in arrays["image"][:fits]]
        fit_ms = (time.perf_counter() - started) / fits * 1000
        record(
            args.results_dir,
            "world_scenes",
            "cpu",
            {"size": size, "images": count, "fits": fits, "tiny": args.tiny},
            {
                "render_ms": render_ms,
                "fit_ms": fit_ms,
                "fit_ok": sum(fit.ok for fit in results) / fits,
            },
        )


if __name__ == "__main__":
    main()
