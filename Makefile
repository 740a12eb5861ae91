# Set up a virtual environment, run the debug recipe, run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup train test test-fast sweep bench verify clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# a stamp: the install is redone only when the package's metadata changes (or the venv is new)
INSTALLED := $(VENV)/.installed

$(INSTALLED): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[cpu,dev,hf]"
	touch $@

setup: $(INSTALLED)  ## install the package (CPU torch 2.13.0 wheel first, so no CUDA build is pulled)

train: setup  ## the main job: TTT-E2E on the debug model, embedded corpus, CPU
	$(BIN)/ttt fit --config recipes/debug/e2e.yaml

test: setup  ## the layer contract, then the whole test suite (what CI runs)
	$(BIN)/lint-imports --no-logo --no-cache
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup  ## the layer contract and every test but the slow ones (subprocesses, spawns, the notebook)
	$(BIN)/lint-imports --no-logo --no-cache
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

sweep: setup  ## loss vs context length for fa, swa, e2e at 1/8 of the paper's geometry (about an hour on 2 CPU cores)
	$(BIN)/ttt sweep recipes/debug/sweep-context.yaml

AUTHORS := tests/fixtures/authors_checkpoint

verify: setup  ## parity with the authors' JAX numbers, float32 and float64; their checkpoint imported and checked
	$(BIN)/ttt verify-reference tests/fixtures/reference_e2e/tiny.npz --dtype float32
	$(BIN)/ttt verify-reference tests/fixtures/reference_e2e/tiny.npz --dtype float64
	rm -rf build/authors-tiny
	$(BIN)/ttt import-jax $(AUTHORS)/checkpoints/tiny/tiny_ttt_e2e_pretrain_dclm_8k_1x_cc \
		--config $(AUTHORS)/authors_config.json --out build/authors-tiny --no-progress
	$(BIN)/ttt verify-import build/authors-tiny $(AUTHORS)/reference.npz --dtype float32
	$(BIN)/ttt verify-import build/authors-tiny $(AUTHORS)/reference.npz --dtype float64

bench: setup  ## training and inference of fa, swa, e2e side by side -> bench-results/summary.json (<= 15 min on 2 cores)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.table

clean:
	rm -rf runs build *.egg-info
