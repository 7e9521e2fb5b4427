#!/usr/bin/env bash
# One lease of a CUDA machine (the H200 lent for a few minutes): trains the known-answer
# world's two variants side by side on the one GPU (bench/world_gpu.py), then records the GPU
# benchmark rows of issue 17 (`make bench-gpu`'s dump overhead and probe cell) in what time is
# left. Results go to $OUT (at most 8 files come back): each variant's pipeline folder as a tar
# split in 15 MB parts and its log, the benchmarks' log and their new records.
#
# The machine has PyTorch but not this project's pins: the wheels of the packages it lacks
# travel in .whl/ (diffusers, transformers, zarr and their missing needs).
set -u
OUT=${OUT:-/tmp/gpu-out}
MINUTES=${MINUTES:-6.2}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, transformers, zarr; print(torch.__version__, diffusers.__version__, transformers.__version__, zarr.__version__)" || exit 1

for variant in latent16 latent32; do
    (
        python3 bench/world_gpu.py --variant $variant --out /tmp/$variant --minutes "$MINUTES" \
            >"$OUT/$variant.log" 2>&1
        tar -C /tmp/$variant -cf /tmp/$variant.tar pipeline vae/training.json sizing.json \
            && split -b 15M -d /tmp/$variant.tar "$OUT/$variant.tar."
    ) &
done
wait
ls -la "$OUT"
tail -n 2 "$OUT"/*.log

# Issue 17's GPU rows, each bounded so that the lease ends in time; each bench appends its
# records to bench/results/*.jsonl, whose new lines are collected in $OUT/bench_records.jsonl.
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
tail -n 5 "$OUT/bench.log"
