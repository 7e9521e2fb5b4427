#!/usr/bin/env bash
# One lease of a CUDA machine (the H200 lent for a few minutes): records the GPU benchmark rows
# of issue 17 (`make bench-gpu`'s dump overhead and probe cell, then the 100-image study end to
# end, bench/bench_study.py), each bounded so that the lease ends in time. Results go to $OUT:
# the benchmarks' log and their new records (bench_records.jsonl). The known-answer world's
# training, which the first lease ran here (bench/world_gpu.py, BENCHMARKS section 9), is done
# and committed (world/weights/diffusion), so it is no longer part of the session.
#
# The machine has PyTorch but not this project's pins: the wheels of the packages it lacks
# travel in .whl/ (diffusers, transformers, zarr and their missing needs). The study runs the
# workflow, so it also needs snakemake and the demo labelers' packages (rembg, onnxruntime,
# matplotlib, ...) among them; without them it is skipped and says so.
set -u
OUT=${OUT:-/tmp/gpu-out}
STUDY_SECONDS=${STUDY_SECONDS:-420}
STUDY_STEPS=${STUDY_STEPS:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, transformers, zarr; print(torch.__version__, diffusers.__version__, transformers.__version__, zarr.__version__)" || exit 1

# Each bench appends its records to bench/results/*.jsonl, whose new lines are collected in
# $OUT/bench_records.jsonl after every bench.
cd bench || exit 1
export PYTHONPATH=$PYTHONPATH:$PWD
cat results/*.jsonl | sort >/tmp/before.jsonl
bench() {
    timeout "$1" python3 "${@:2}" >>"$OUT/bench.log" 2>&1
    echo "$2 exit $?" | tee -a "$OUT/bench.log"
    cat results/*.jsonl | sort | comm -13 /tmp/before.jsonl - >"$OUT/bench_records.jsonl"
}
bench 100 bench_dump.py --full-size --device cuda --reps 3
bench 60 bench_probe.py --sources synthetic --device cuda --images 24
if python3 -c "import snakemake, rembg, onnxruntime, matplotlib" 2>>"$OUT/bench.log"; then
    bench "$STUDY_SECONDS" bench_study.py --images 100 --device cuda --probe-steps "$STUDY_STEPS"
else
    echo "bench_study.py skipped: snakemake or a labeler package is missing" | tee -a "$OUT/bench.log"
fi
tail -n 5 "$OUT/bench.log"
