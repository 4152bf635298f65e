# Rewarm: every target sets itself up (a virtualenv in .venv) on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first and pinned to the CPU build on disk: a looser resolution pulls GB of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install services test demo reproduce toyworld-weights bench bench-sweep bench-scale bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Test services from Debian's packages, where missing and we may install them: PostgreSQL for the
# MLflow-server test (tests/test_mlflow_server.py) and Chromium for the report's browser check
# (tests/test_report.py). Without them those tests skip, saying why; under CI=true they fail.
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q
define apt_ensure
	@$(1) >/dev/null 2>&1 || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { $(APT_INSTALL) $(2) >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && $(APT_INSTALL) $(2) >/dev/null 2>&1; }; } \
	  || echo "note: $(2) could not be installed; the tests that need it skip (under CI=true they fail)"; }
endef

services:
	$(call apt_ensure,ls /usr/lib/postgresql/*/bin/initdb,postgresql)
	$(call apt_ensure,command -v chromium,chromium)

# Two test processes, each with its own session Ray cluster; a test file runs whole in one of
# them (module fixtures: a shared sweep, server or cluster), the longest files first
# (tests/conftest.py: LONGEST_FIRST). Most of a Ray test's wall time is one process starting at
# a time (a controller, a worker, a cluster), so a second test fills the other core: README,
# "Measured". TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: install services
	$(BIN)/python -m pytest -q -rs --durations=10 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

# A single run, then a real sweep on the embedded default (local Ray, ./mlflow.db, the toy world built on
# first use); each run gets its own sweep name so `make demo` can be repeated.
DEMO_NAME ?= demo-$(shell date +%Y%m%d-%H%M%S)
demo: install
	$(BIN)/rewarm train sweeps/specs/smoke.yaml
	$(BIN)/rewarm sweep sweeps/specs/demo.yaml --set name=$(DEMO_NAME)
	$(BIN)/rewarm best --sweep $(DEMO_NAME) --top 5
	$(BIN)/rewarm analyze --sweep $(DEMO_NAME)
	$(BIN)/rewarm report --sweep $(DEMO_NAME) --out reports/$(DEMO_NAME)
	@echo "MLflow UI (the sweep's runs):"; $(BIN)/rewarm ui --sweep $(DEMO_NAME)

# Issue #15: the papers' findings on the embedded world (26 trials as real sweeps tracked in ./mlflow.db;
# a rerun reuses finished sweeps). Output committed in benchmarks/results/reproduce.
reproduce: install
	$(BIN)/rewarm reproduce all --out benchmarks/results/reproduce

# The toy world's base model, pre-trained afresh (~3 min on 2 cores) into trainers/toyworld_weights/,
# which ships it; run after a change to ToyWorldConfig or the generator, then commit the folder.
toyworld-weights: install
	$(BIN)/python -m trainers.toyworld ship

bench: install
	$(BIN)/python -m benchmarks.trainer_bench
	$(BIN)/python -m benchmarks.overhead_bench
	$(BIN)/python -m benchmarks.read_scale_bench

# Issue #7: search strategies vs a 36-config ground-truth grid (the grid is trained once, ~9 min
# on 2 cores, and cached in benchmarks/results/sweep_ground_truth.json, which is committed).
bench-sweep: install
	$(BIN)/python -m benchmarks.sweep_efficiency
	$(BIN)/python -m benchmarks.forecast_coverage
	$(BIN)/python -m benchmarks.search_scale_bench

# Issue #14 on CPU: data preparation memory at two corpus sizes, evaluation memory, checkpoint
# size and time of a Pythia-410M-shaped model (~6 min on 2 cores, ~12 GB of temp disk).
bench-scale: install
	$(BIN)/python -m benchmarks.scale_bench

# Issue #14 on a GPU machine (not in CI): a Pythia-410M-shaped model, bf16, seq 2048, DDP and FSDP.
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu_bench

clean:
	rm -rf $(VENV) rewarm_runs mlflow.db mlruns .pytest_cache
