# Set-up and checks. `make demo` and `make test` create .venv and install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.advbayes-installed

.PHONY: install demo lint test test-fast clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) examples/my-defense-plugin/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "advbayes needs Python 3.10 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision as a matched pair from the package index (loose lower bounds).
	$(BIN)/python -m pip install --quiet "torch>=2.2" "torchvision>=0.17"
	$(BIN)/python -m pip install --quiet -e ".[test]" $(foreach p,$(PLUGIN_DIRS),-e ./$(p)) -e ./examples/my-defense-plugin
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/advbayes run quickstart

LINTED := core plugins examples tests benchmarks

lint: install
	$(BIN)/python -m ruff check $(LINTED)
	$(BIN)/python -m ruff format --check $(LINTED)
	$(BIN)/python -m mypy

test: install lint
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest

# The core of the suite without the tests marked slow (real trainings, official-implementation comparisons,
# fresh processes) or server (a real mlflow server): for the edit-test loop. CI runs `make test`.
test-fast: install
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/python -m pytest -m "not slow and not server"

clean:
	rm -rf $(VENV) build dist core/*.egg-info plugins/*/*.egg-info
