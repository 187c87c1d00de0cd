# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision: CUDA builds that also run on CPU; these versions install from local disk here.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job: synthetic archive -> init-pool -> pretrain -> AL rounds -> export -> tag.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

## The whole test suite (what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Skip the slow end-to-end tests and those against a real Label Studio server.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not labelstudio"

lint: $(STAMP)
	$(BIN)/ruff check alft_cli tests bench

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
