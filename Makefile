# fasciculation-cds — the commands a newcomer needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
AS_OF ?= 2026-11-26

.PHONY: demo test lint typecheck bench docs clean venv browser fhir-server

$(VENV)/bin/activate:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.10-3.12)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(VENV)/bin/activate

## demo: install the package and show the clinician summary for fhir_examples/
demo: venv
	$(PY) -m pip install --quiet .
	$(VENV)/bin/fasciculation-cds evaluate fhir_examples --as-of $(AS_OF) --format text

## test: install with dev extras, lint, type-check, run the whole suite
test: venv browser fhir-server
	$(PY) -m pip install --quiet -e '.[dev]'
	$(MAKE) lint typecheck
	$(PY) -m pytest

## browser: headless Chromium for the report rendering tests (Debian package; needs root)
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1)) || \
	  echo "chromium could not be installed: the browser tests will be skipped"

## fhir-server: the in-memory FHIR server (Node, npm) the service tests start on loopback
fhir-server:
	@command -v npm >/dev/null 2>&1 && npm ci --prefix tests/fhir_server --no-audit --no-fund --silent || \
	  echo "npm unavailable: the FHIR server tests will be skipped"

lint: venv
	$(VENV)/bin/ruff check src tests

typecheck: venv
	$(VENV)/bin/mypy

## bench: throughput and memory report in bench/results.md, bench/results.json, bench/batch.{md,json}
##        (batch against a polars query on the same export, scaling, memory, Spark),
##        bench/scale.{md,json} (100,000 patients, local and Spark local[2], peak RSS per process)
##        and CDS Hooks service latency in bench/service.{md,json}
bench: venv
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) bench/run_bench.py --patients 2000 --out bench
	$(PY) bench/batch_bench.py --sizes 2000 20000 --out bench
	$(PY) bench/batch_bench.py --scale 100000 --out bench
	$(PY) bench/service_bench.py --out bench

## docs: regenerate docs/rules/ from the rule files
docs: venv
	$(PY) -m pip install --quiet -e .
	$(VENV)/bin/fasciculation-cds rules docs --out docs/rules

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
