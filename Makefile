# Two entry points: `make demo` (install, run the offline demo, write the report) and
# `make test` (install, run the test suite). Both create ./.venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= 8

.PHONY: install demo report test lint format clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml
	$(SNAKEMAKE) --configfile config/demo.yaml --report results/report.html

test: install
	$(PY) -m pytest -q -n 2 tests

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
