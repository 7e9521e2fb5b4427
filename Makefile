# Two entry points: `make demo` (install, run the offline demo, write the report) and
# `make test` (install, run the test suite). Both create ./.venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
# Every core of the machine (`make demo CORES=4` to leave some free).
CORES ?= all

.PHONY: install demo report test lint format clean bench bench-gpu bench-cluster world-weights

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The demo is the known-answer world study at demo size (config/world-demo.yaml);
# `make demo DEMO_CONFIG=config/demo.yaml` runs every stage on random-weight models instead.
DEMO_CONFIG ?= config/world-demo.yaml

demo: install
	$(SNAKEMAKE) --cores $(CORES) --configfile $(DEMO_CONFIG)
	$(SNAKEMAKE) --configfile $(DEMO_CONFIG) --report results/report.html

# Retrains every model of the known-answer world from scratch into world/weights: the latent
# diffusion model (rules/world.smk), the labelers, classifier and exact labels' world definition
# (rules/world_labelers.smk); each folder with its RECIPE.json.
world-weights: install
	$(SNAKEMAKE) --cores 2 --configfile config/world.yaml \
		--forcerun world_vae world_labeler world_classifier world_spec -- world_weights

test: install
	$(PY) -m pytest -q -n 2 tests

# Benchmarks (bench/, BENCHMARKS.md): each script appends records to bench/results/, then
# report.py rewrites BENCHMARKS.md's tables. `bench` is the CPU set; `bench-gpu` the full-size
# SD v1.x rows, on a machine with a CUDA GPU; `bench-cluster` the per-image cost on the
# one-node SLURM test cluster (root: it installs and starts SLURM, then stops it).
bench: install
	cd bench && $(abspath $(PY)) bench_unet_calls.py && $(abspath $(PY)) bench_storage.py \
		&& $(abspath $(PY)) bench_dump.py && $(abspath $(PY)) bench_probe.py && $(abspath $(PY)) bench_store.py \
		&& $(abspath $(PY)) bench_dag.py \
		&& $(abspath $(PY)) bench_demo.py && $(abspath $(PY)) report.py

bench-gpu: install
	cd bench && $(abspath $(PY)) bench_dump.py --full-size --device cuda \
		&& $(abspath $(PY)) bench_storage.py --full-size --device cuda --images 2 \
		&& $(abspath $(PY)) bench_probe.py --sources synthetic \
		&& $(abspath $(PY)) bench_probe.py --sources synthetic --device cuda && $(abspath $(PY)) report.py

bench-cluster: install
	cd bench && $(abspath $(PY)) bench_cluster.py && $(abspath $(PY)) report.py

lint: install
	$(SNAKEMAKE) --lint --configfile config/demo.yaml
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/snakefmt --check Snakefile rules

format: install
	$(VENV)/bin/ruff format src tests scripts bench
	$(VENV)/bin/ruff check --fix src tests scripts bench
	$(VENV)/bin/snakefmt Snakefile rules

clean:
	rm -rf results resources/demo-models .snakemake
