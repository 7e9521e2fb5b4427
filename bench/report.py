"""Render the benchmark records (``bench/results/*.jsonl``) into BENCHMARKS.md's tables.

BENCHMARKS.md is written by hand around the tables: each table sits between
``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` and is replaced whole, the prose stays.
Every row names the machine it was measured on (a footnote per machine) and the load average
(1, 5, 15 min) when it was recorded. Tiny smoke-test records are left out. A benchmark that
needs a GPU and has no GPU record yet gets a 'pending' row with the command that measures it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchlib import REPO, RESULTS, read_records

from ldmprobe.core.io import atomic_file

PENDING = {
    "dump_overhead": "make bench-gpu",
    "dump_cpu": "nice .venv/bin/python bench/bench_dump.py --sizes 128 --reps 5",
    "demo_end_to_end": "nice .venv/bin/python bench/bench_demo.py",
    "study_end_to_end": "python bench/bench_study.py --images 100 --device cuda",
}


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def loads(values) -> str:
    """Load averages (1, 5, 15 min) as the tables show them."""
    return " ".join(f"{value:.1f}" for value in values)


def load_text(entry: dict) -> str:
    return loads(entry.get("load") or entry["results"].get("load_after") or [])


class Machines:
    """Footnote numbers for machine labels, in order of first use."""

    def __init__(self):
        self.labels: list[str] = []

    def ref(self, entry: dict) -> str:
        label = entry["machine"]["label"]
        if label not in self.labels:
            self.labels.append(label)
        return f"M{self.labels.index(label) + 1}"

    def legend(self) -> str:
        return "\n".join(f"- M{i + 1}: {label}" for i, label in enumerate(self.labels))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def dump_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                load_text(r),
                f"{c['model']}, {c['unet_dtype']}, {c['size']} px, {c['steps']} steps",
                c["reps"],
                f"{x['median_s']['plain']:.2f}",
                f"**{x['ratio_dump']:.2f}** ({x['cpu_ratio_dump']:.2f})",
                f"{x['ratio_dump_sync']:.2f} ({x['cpu_ratio_dump_sync']:.2f})",
                f"{x['ratio_job']:.2f} ({x['cpu_ratio_job']:.2f})",
                f"{x['images_per_s_dump']:.3f} / {x['images_per_s_job']:.3f}",
            ]
        )
    if not any(r["machine"]["gpu"] for r in records):
        rows.append(["GPU", "", f"pending: `{PENDING['dump_overhead']}`", *[""] * 6])
    if all(r["machine"]["gpu"] for r in records):
        pending = f"pending: `{PENDING['dump_cpu']}` on an idle machine"
        rows.append(["CPU", "", pending, *[""] * 6])
    header = [
        "machine",
        "load",
        "model",
        "reps",
        "plain s (median)",
        "dump / plain, wall (CPU)",
        "dump, sync writes / plain, wall (CPU)",
        "job (dump + x0 previews) / plain, wall (CPU)",
        "images/s dump / job",
    ]
    return table(header, rows)


def probe_rows(records, machines):
    """Rows measured against the honest floor (read once vs the epochs' products); older rows
    measured against the read alone show a dash there."""
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        floor = "products_s" in x
        rows.append(
            [
                machines.ref(r),
                load_text(r),
                c["source"],
                f"{c['layer']} ({c['tokens']}x{c['channels']})",
                x.get("device", "cpu"),
                c["images"],
                c["epochs"],
                " ".join(f"{s:.2f}" for s in x["read_s"]),
                " ".join(f"{s:.2f}" for s in x["products_s"]) if floor else "-",
                f"{x['train_s']:.2f}",
                f"{x['time_ratio']:.1f}",
                f"**{x['floor_ratio']:.1f}**" if floor else "-",
                mib(x["cell_fp16_bytes"]),
                f"{mib(x['train_peak_rss_bytes'])} ({x['train_memory_ratio']:.1f}x)",
                f"{mib(x['read_peak_rss_bytes'])} ({x['read_memory_ratio']:.1f}x)",
            ]
        )
    # A GPU row is pending for each layer size measured on the CPU and not on a GPU.
    on_gpu = {r["config"]["layer"] for r in records if r["results"].get("device", "cpu") != "cpu"}
    for layer in dict.fromkeys(r["config"]["layer"] for r in records):
        if layer not in on_gpu:
            rows.append(["GPU", "", f"pending: `{PENDING['dump_overhead']}`", layer, *[""] * 11])
    if not records:
        rows.append(["GPU", "", f"pending: `{PENDING['dump_overhead']}`", *[""] * 12])
    header = [
        "machine",
        "load",
        "stores",
        "layer (tokens x channels)",
        "device",
        "images",
        "epochs",
        "read s",
        "products s",
        "train s (3 tasks)",
        "train / read",
        "train / floor",
        "cell fp16 MiB",
        "train peak MiB (x fp16)",
        "read peak MiB (x fp16)",
    ]
    return table(header, rows)


def huber_rows(records, machines):
    rows = [
        [
            machines.ref(r),
            load_text(r),
            r["config"]["source"],
            f"{r['config']['layer']} ({r['config']['tokens']}x{r['config']['channels']})",
            r["config"]["images"],
            r["config"]["epochs"],
            " ".join(f"{v:.2f}" for v in r["results"]["label_s"]),
            " ".join(f"{v:.2f}" for v in r["results"]["native_s"]),
            f"**{r['results']['speedup']:.1f}x**",
        ]
        for r in records
    ]
    header = [
        "machine",
        "load",
        "stores",
        "layer (tokens x channels)",
        "images",
        "epochs",
        "Huber at label resolution: training s",
        "Huber exact at the token grid: training s",
        "faster",
    ]
    return table(header, rows)


def codec_name(codec: dict, layout: str | None = None) -> str:
    """``int8-channel`` names its stored layout: the records made before the ``layout``
    field (the config's, beside ``codec``) stored it token-major."""
    name = codec["name"] + (f" {codec['level']}" if "level" in codec else "")
    quantise = codec.get("quantise", "none")
    if quantise == "int8-channel":
        quantise += f" ({layout or 'token-major'})"
    return name if quantise == "none" else f"{quantise} + {name}"


def record_codec(config: dict) -> str:
    return codec_name(config["codec"], config.get("layout"))


def store_set_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        # The plan is keyed by source role; records made before the backbone seam by "unet".
        steps = c["read"].get("denoiser", c["read"].get("unet"))["steps"]
        rows.append(
            [
                machines.ref(r),
                f"{c['model']}, {c['size']} px, {c['steps']} steps",
                record_codec(c),
                f"{steps} and the controls",
                c["images"],
                f"{x['all_bytes_per_image'] / 1e6:.2f}",
                f"{x['read_bytes_per_image'] / 1e6:.2f}",
                f"**{x['ratio']:.2f}x**",
            ]
        )
    header = [
        "machine",
        "model",
        "codec",
        "read: U-Net steps",
        "images",
        "all: MB/image",
        "read: MB/image",
        "all / read",
    ]
    return table(header, rows)


def codec_metric_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                f"{c['model']}, {c['size']} px, {c['steps']} steps",
                record_codec(c),
                c["images"],
                f"{x['baseline_bytes_per_image'] / 1e6:.3f}",
                f"{x['bytes_per_image'] / 1e6:.3f}",
                f"**{x['smaller']:.2f}x**",
                len({(cell["layer"], cell["step"]) for cell in x["cells"]}),
                f"**{x['max_abs_delta']:.4f}**",
                f"{x['max_image_delta']:.4f}",
                f"{x['max_val_loss_rel_change']:.1e}",
                f"{x['max_output_rel_change']:.1e}",
            ]
        )
    header = [
        "machine",
        "model",
        "codec",
        "images",
        "float16 + blosc-zstd 3: activation MB/image",
        "8-bit: activation MB/image",
        "smaller",
        "cells",
        "max over cells and metrics of abs(change of the mean)",
        "max change of one image's metric",
        "max relative change of a validation loss",
        "max relative change of the probe outputs",
    ]
    return table(header, rows)


CELL_METRICS = {
    "demo": ["saliency dice", "depth spearman", "depth pearson", "depth rmse"],
    "world": [
        "saliency dice",
        "depth spearman",
        "depth spearman_objects",
        "shading pearson",
        "shading pearson_objects",
    ],
}


def codec_cell_rows(records, machines, model: str = "demo"):
    """Every (layer, step) of the latest record of each codec on ``model`` (of any layout: the
    values read back are the same): the change of each metric."""
    latest = {}
    for r in records:
        if r["config"]["model"] == model:
            latest[str(sorted(r["config"]["codec"].items()))] = r
    metrics = CELL_METRICS[model]
    rows = []
    for r in latest.values():
        name = record_codec(r["config"])
        changes = {}
        for cell in r["results"]["cells"]:
            key = (cell["layer"], cell["step"])
            changes.setdefault(key, {})[f"{cell['task']} {cell['metric']}"] = cell
        for (layer, step), values in changes.items():
            rows.append(
                [
                    name,
                    layer,
                    step,
                    *[
                        f"{values[m]['float16']:.3f} {values[m]['delta']:+.4f}"
                        if m in values
                        else ""
                        for m in metrics
                    ],
                    f"{max(v['output_rel_change'] for v in values.values()):.1e}",
                ]
            )
    header = [
        "codec",
        "layer",
        "step",
        *[f"{m}: float16, change" for m in metrics],
        "probe outputs: relative change",
    ]
    return table(header, rows)


def storage_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        codec = record_codec(c)
        rows.append(
            [
                machines.ref(r),
                load_text(r),
                f"{c['model']}, {c['size']} px, {c['steps']} steps",
                c["data"],
                codec,
                mib(x["raw_fp16_bytes_per_image"]),
                mib(x["stored_bytes_per_image"]),
                f"**{x['compression_ratio']:.3f}**",
                f"{x['write_mb_per_s']:.0f}",
                f"{x['read_mb_per_s']:.0f}",
                f"{x['relative_rms_error']:.1e}" if "relative_rms_error" in x else "",
            ]
        )
    header = [
        "machine",
        "load",
        "model",
        "data",
        "codec",
        "raw fp16 MiB/image",
        "stored MiB/image",
        "raw / stored",
        "write MB/s",
        "read MB/s",
        "relative RMS error",
    ]
    return table(header, rows)


def dag_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                loads(x["load_before"]),
                f"{c['prompts']:,}",
                str(c.get("images_per_job", 1)),
                f"{x['jobs'].get('total', 0):,}",
                " ".join(f"{s:.1f}" for s in x["wall_s"]),
                "**" + " ".join(f"{s:.1f}" for s in x["cpu_s"]) + "**",
                mib(x["peak_rss_bytes"]),
                f"{c['target_s']} s" if c.get("target_s") else "",
            ]
        )
    header = [
        "machine",
        "load before",
        "prompts",
        "images per job",
        "jobs",
        "wall s",
        "CPU s",
        "peak RSS MiB",
        "target",
    ]
    return table(header, rows)


def demo_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                loads(x["load_before"]),
                f"`{c.get('config', 'config/demo.yaml')}`",
                c["cores"],
                str(c.get("images_per_job", 1)),
                x["jobs"],
                f"{x['workflow_s']:.0f}",
                f"{x['report_s']:.0f}",
                f"**{x['total_s']:.0f}**",
                f"{x['workflow_cpu_s']:.0f}",
                f"{c['target_s']} s",
            ]
        )
    if not records:
        pending = f"pending: `{PENDING['demo_end_to_end']}` on an idle machine"
        rows.append(["2-core CPU", "", "", "2", "", "", pending, *[""] * 4])
    header = [
        "machine",
        "load before",
        "config",
        "cores",
        "images per job",
        "jobs",
        "workflow s",
        "report s",
        "total s",
        "workflow CPU s",
        "target",
    ]
    return table(header, rows)


def calls_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                c["config"],
                c["images"],
                f"{c['unit']} ({x['units']})",
                x["probed_steps"],
                f"{x['workflow_calls']:,}",
                f"{x['reference_calls']:,}",
                f"**{x['ratio']:.0f}x**",
            ]
        )
    header = [
        "machine",
        "config",
        "images",
        "probing run per (step, ...)",
        "probed steps",
        "U-Net calls, this workflow",
        "U-Net calls, reference",
        "reference / ours",
    ]
    return table(header, rows)


def cluster_rows(records, machines):
    rows = []
    for r in records:
        c, x = r["config"], r["results"]
        rows.append(
            [
                machines.ref(r),
                loads(x["load_before"]),
                c["way"],
                str(c["images_per_job"]),
                str(x["slurm_jobs"]),
                f"{x['generate_jobs']} + {x['label_jobs']}",
                f"**{x['wall_per_image_s']:.1f}**",
                f"{x['model_loads_per_image_s']:.1f}",
                f"{x['generation_and_labels_per_image_s']:.1f}",
                f"{x['rest_per_image_s']:.1f}",
            ]
        )
    header = [
        "machine",
        "load before",
        "way",
        "images per job",
        "SLURM jobs",
        "generate + label jobs",
        "wall s per image",
        "model loads s per image",
        "work s per image",
        "rest s per image",
    ]
    return table(header, rows)


def study_rows(records, machines):
    """The study end to end: per stage, the span from its first job's start to its last job's
    end (its jobs' summed seconds in brackets where they differ)."""
    stages = ["models", "generate", "label", "probes", "tables", "figures", "report"]
    rows = []
    for r in records:
        c, x = r["config"], r["results"]

        def seconds(stage, x=x):
            part = x["stages"].get(stage)
            if part is None:
                return ""
            span, busy = part["span_s"], part["busy_s"]
            return f"{span:.0f}" + (f" ({busy:.0f})" if round(busy) != round(span) else "")

        rows.append(
            [
                machines.ref(r),
                loads(x["load_before"]),
                f"{c['architecture']}, {c['dtype']}, {c['size']} px, {c['steps']} steps",
                c["images"],
                c["device"],
                x["jobs"],
                *[seconds(stage) for stage in stages],
                f"**{x['total_s']:.0f}**",
                f"{x['images_per_s']:.2f}",
                f"{x['bytes']['total'] / 1e9:.2f}",
            ]
        )
    if not any(r["config"]["device"].startswith("cuda") for r in records):
        pending = f"pending: `{PENDING['study_end_to_end']}`"
        rows.append(["GPU", "", pending, "100", "cuda", *[""] * 11])
    header = [
        "machine",
        "load before",
        "model",
        "images",
        "device",
        "jobs",
        *[f"{stage} s" for stage in stages],
        "total s",
        "images/s (generate)",
        "GB written",
    ]
    return table(header, rows)


# Tables rendered from another benchmark's records.
CELLS_OF = {"codec_cells": "codec_metrics", "codec_cells_world": "codec_metrics"}


def world_scenes_rows(records, machines):
    rows = [
        [
            machines.ref(r),
            load_text(r),
            f"{r['config']['size']} px",
            f"{r['results']['render_ms']:.1f}",
            f"{r['results']['fit_ms']:.0f}",
            f"{r['results']['fit_ok']:.2f}",
        ]
        for r in records
    ]
    header = ["machine", "load", "size", "render ms/image", "fit ms/image", "fits that hold"]
    return table(header, rows)


RENDERERS = {
    "dump_overhead": dump_rows,
    "probe_cell": probe_rows,
    "probe_huber": huber_rows,
    "storage": storage_rows,
    "store_set": store_set_rows,
    "codec_metrics": codec_metric_rows,
    "codec_cells": codec_cell_rows,
    "codec_cells_world": lambda records, machines: codec_cell_rows(records, machines, "world"),
    "dag_scale": dag_rows,
    "demo_end_to_end": demo_rows,
    "study_end_to_end": study_rows,
    "unet_calls": calls_rows,
    "cluster_images": cluster_rows,
    "world_scenes": world_scenes_rows,
}


def render_tables(records: list[dict]) -> dict[str, str]:
    """One markdown table per benchmark, plus ``machines``: the legend of the M-numbers."""
    machines = Machines()
    kept = [r for r in records if not r["config"].get("tiny")]
    tables = {
        name: render([r for r in kept if r["bench"] == CELLS_OF.get(name, name)], machines)
        for name, render in RENDERERS.items()
    }
    tables["machines"] = machines.legend()
    return tables


def fill(document: str, tables: dict[str, str]) -> str:
    for name, text in tables.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if not pattern.search(document):
            raise ValueError(f"BENCHMARKS.md has no <!-- table:{name} --> block")
        document = pattern.sub(lambda m, t=text: m.group(1) + t + "\n" + m.group(2), document)
    return document


def main(argv=None) -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--results-dir", type=Path, default=RESULTS)
    args.add_argument("--document", type=Path, default=REPO / "BENCHMARKS.md")
    options = args.parse_args(argv)
    tables = render_tables(read_records(options.results_dir))
    document = fill(options.document.read_text(), tables)
    with atomic_file(options.document) as tmp:
        tmp.write_text(document)


if __name__ == "__main__":
    main()
