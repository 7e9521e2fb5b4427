"""What every benchmark shares: the machine it ran on, result records, timing, memory.

Each benchmark appends JSON lines to ``<results>/<bench>.jsonl``; one record per measured
configuration, with the machine description and its load average (1, 5, 15 min, when the
record was written) beside the numbers, so ``report.py`` can say which machine each row of
BENCHMARKS.md came from and how busy it was.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: where results go and the tiny smoke-test size."""
    args = argparse.ArgumentParser(description=description)
    args.add_argument("--results-dir", type=Path, default=RESULTS, help="JSONL output folder")
    args.add_argument(
        "--tiny", action="store_true", help="smallest sizes: checks that the script runs"
    )
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine(device: str = "cpu") -> dict:
    """The machine a record was measured on; ``label`` is what BENCHMARKS.md shows."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": cores,
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "gpu": None,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    where = info["gpu"] or f"CPU {info['cpu']}"
    info["label"] = f"{where}, {cores} cores, {info['memory_gib']} GiB, torch {torch.__version__}"
    return info


def load() -> list[float]:
    """The 1-minute load average: a shared machine inflates wall times, so records keep it."""
    return [round(value, 2) for value in os.getloadavg()]


def record(results_dir: Path, bench: str, device: str, config: dict, results: dict) -> dict:
    """Append one measurement to ``<results_dir>/<bench>.jsonl`` and return it."""
    entry = {
        "bench": bench,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "load": load(),
        "config": config,
        "results": results,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / f"{bench}.jsonl", "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
    print(json.dumps({"bench": bench, "config": config, "results": results}, indent=1))
    return entry


def read_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted(results_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def timed(function, device: str = "cpu") -> float:
    """Wall seconds of ``function()``, with the GPU's queue drained before and after."""
    synchronise(device)
    start = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values))


def rss_bytes() -> int:
    """This process's resident set now (Linux), for a baseline before the measured work."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_command(command: list[str], env: dict | None = None, cwd=None) -> dict:
    """Wall time, CPU time and peak RSS of one command, measured in a fresh wrapper process.

    RUSAGE_CHILDREN keeps the maximum over every child a process ever waited for, so each
    command gets its own wrapper to report only its own peak. CPU seconds (user + system,
    the command and its children) vary less than wall time on a shared machine.
    """
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - start\n"
        "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': done.returncode, 'wall_s': wall,"
        " 'cpu_s': usage.ru_utime + usage.ru_stime, 'peak_rss_bytes': usage.ru_maxrss * 1024,"
        " 'stdout': done.stdout, 'stderr': done.stderr}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=True,
    )
    return json.loads(done.stdout)


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (apparent sizes: what a copy or a transfer moves)."""
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file())
