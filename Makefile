# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   create .venv, install, run the demo sweep, print where results and report are
#   make test   create .venv, install, lint, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-all lint bench literature setup clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/landscape-sweep

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# Only the slow ones: real Ray end to end, workers and drivers killed by signals, a cluster,
# the literature sweeps, the README's tour (about 9 minutes on 2 cores).
test-slow: $(BIN)/.installed
	$(BIN)/pytest -o addopts="" -m "slow and not gpu"

# Both: the default suite and the slow end-to-end and fault tests.
test-all: lint
	$(BIN)/pytest -m "not gpu"

# The literature's qualitative results (see README) on this machine: the demo's grid with three
# seeds (so that mode connectivity has a seed spread) and four small sweeps, then their verdicts
# (about five minutes on 2 cores; see README "Does it reproduce the literature?").
LITERATURE := literature_lr literature_diverge literature_noise literature_skip
literature: $(BIN)/.installed
	$(BIN)/landscape-sweep sweep.name=literature_batch seed=0,1,2 --quiet
	for s in $(LITERATURE); do $(BIN)/landscape-sweep sweep=$$s --quiet || exit 1; done
	$(BIN)/landscape-claims $(addprefix results/,literature_batch $(LITERATURE)) --json results/claims.json

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_packing.py --quick --out benchmarks/results/bench_packing.json

clean:
	rm -rf $(VENV) results
