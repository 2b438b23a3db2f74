# Set-up and checks. `make demo` and `make test` create .venv and install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.advbayes-installed

.PHONY: install demo lint test test-fast findings leaderboard clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) examples/my-defense-plugin/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "advbayes needs Python 3.10 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv (from PyPI) resolves and installs everything in one step, in parallel, and keeps build logs quiet.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
	# torch and torchvision resolved together as a matched pair from the package index (loose lower bounds).
	$(BIN)/uv pip install --quiet --python $(BIN)/python "torch>=2.2" "torchvision>=0.17" \
		-e ".[test]" $(foreach p,$(PLUGIN_DIRS),-e ./$(p)) -e ./examples/my-defense-plugin
	# Where PYTHONDONTWRITEBYTECODE is set (as on these machines) no .pyc is ever cached, and every process the
	# suite starts compiled torch and mlflow again (12 s of a 25 s `advbayes run moons`). In this venv Python writes
	# the .pyc of each module it imports, once (a .pth line runs at every start): 6 s on the first run, instead of
	# compiling all 18,600 files of site-packages at install (uv --compile-bytecode: 20 s of a 25 s install).
	echo "import sys; sys.dont_write_bytecode = False" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/advbayes-dev-write-bytecode.pth"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/advbayes run quickstart

LINTED := core plugins examples tests benchmarks docs/scripts  # tests/test_lint.py lists the same

lint: install
	$(BIN)/python -m ruff check $(LINTED)
	$(BIN)/python -m ruff format --check $(LINTED)
	$(BIN)/python -m mypy

# The suite runs on every core (pytest-xdist; TEST_WORKERS=1 runs it serially), each worker's torch on one
# thread: two workers of two OpenMP threads each on 2 cores ran slower than one serial process (110 s vs 84 s
# for three claims tests; 70 s with one thread per worker).
TEST_WORKERS ?= auto
TEST_ENV := MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS=1

# The static checks of `lint` run inside the suite (tests/test_lint.py), beside the other tests on idle cores.
# --durations: the log names the slowest tests, what to look at first when the suite nears its 5-minute budget.
test: install
	$(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=15

# The core of the suite without the tests marked slow (real trainings, official-implementation comparisons,
# fresh processes) or server (a real mlflow server): for the edit-test loop. CI runs `make test`.
test-fast: install
	$(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow and not server"

# docs/findings.md from the run records in docs/records (`advbayes export`), with no store and no network: the same
# bytes on every machine (docs/reports.md).
FINDINGS_EXPERIMENTS := sampling-fashion-style smoothing-condition-mnist-5k hmc-mlp-mnist-5k hmc-moons-32 hmc-moons-128 \
	hmc-moons-256 hmc-moons-512 hmc-moons-32-5k hmc-moons-32-10k hmc-moons-32-15k \
	gradient-limit-mnist-5k \
	advbnn-mnist-5k hvi-vs-advbnn-mnist-5k hvi-vs-advbnn-autoattack-mnist-5k d3-paper-init-mnist-5k d3-converged-mnist-5k \
	d3-collapse-mnist-5k
FINDINGS_METRICS := accuracy cos_alpha_mean attack_length_mean linear_fraction smooth_fraction softmax_robustness

findings: install
	rm -rf docs/findings_figures  # figures of experiments no longer reported do not linger
	$(BIN)/advbayes report $(FINDINGS_EXPERIMENTS) --records docs/records --claims docs/claims.toml \
		--preamble docs/findings-preamble.md --out docs --file findings.md $(foreach m,$(FINDINGS_METRICS),--metric $(m))

# docs/leaderboard/index.html and a page per defense from the result cards in docs/leaderboard/cards (`advbayes
# bench`), with no store and no network: the same bytes on every machine (docs/leaderboard.md). Each card is first
# re-derived from its runs' records in docs/leaderboard/records (`advbayes export --cards`); a difference stops it.
LEADERBOARD_CARDS := docs/leaderboard/cards
LEADERBOARD_RECORDS := docs/leaderboard/records

leaderboard: install
	rm -f docs/leaderboard/*.html  # pages of cards no longer shipped do not linger
	$(BIN)/advbayes leaderboard --cards $(LEADERBOARD_CARDS) --records $(LEADERBOARD_RECORDS) --out docs/leaderboard

clean:
	rm -rf $(VENV) build dist core/*.egg-info plugins/*/*.egg-info
