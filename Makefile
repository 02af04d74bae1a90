# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs (CPU torch wheel first, then genladder with its dev and demo extras) when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo-cvae

.PHONY: demo test lint install clean-venv docs-figures bench

$(BIN)/genladder: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,demo]"
	touch $(BIN)/genladder

install: $(BIN)/genladder

# Trains a small conditional VAE on CPU and draws a 10x10 grid, one digit per row (86 s of training, measured
# on this project's 2-core machine). ARGS go to 'genladder train' after the demo's own options, so they win:
#   make demo ARGS="--epochs 1 --threads 1"
ARGS ?=
demo: install
	$(BIN)/genladder train cvae --epochs 3 --limit 20000 --run-dir $(DEMO_DIR)-$$(date +%Y%m%d-%H%M%S) $(ARGS)

test: install
	$(BIN)/python -m pytest -q

# Redraws every figure of docs/ with genladder's own commands: trains the runs missing from $(RUNS_DIR)
# (8 minutes from scratch on 2 quiet CPU cores), reuses those present. See docs/README.md.
RUNS_DIR ?= runs/docs
docs-figures: install
	$(BIN)/python scripts/docs_figures.py --runs $(RUNS_DIR) $(DOCS_FIGURES_ARGS)

# The benchmark suite (not part of the tests): every model's training and sampling throughput beside
# diffusers' UNet2DModel; tens of minutes on 2 CPU cores. Run it on a quiet machine, e.g.
#   make bench BENCH_ARGS="--threads 2 --json bench.json"   (--quick: a smoke run in seconds)
BENCH_ARGS ?=
bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts benchmarks

clean-venv:
	rm -rf $(VENV)
