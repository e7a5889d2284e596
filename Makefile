# Two commands do everything on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint pytest install retrain bench-quick clean

# Offline: no model hub. Passive OpenMP waits: on shared or oversubscribed cores, spinning threads made torch
# 10-30x slower on the small tensors of the tests and the demo.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the local CPU wheel before anything can pull a CUDA build. The test extra includes what
# ComfyUI's engine and server import (extra "comfy"): with ../shared/comfyui/ComfyUI beside the clone (or
# COMFYUI_PATH), `make test` runs the ComfyUI tests in that engine and server (docs/comfyui.md).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]" torch==2.13.0
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments __init__.py
	$(BIN)/ruff format --check src tests benchmarks experiments __init__.py
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

test: lint pytest

demo: $(STAMP)
	$(BIN)/python -m sparke.cli.demo --out runs/demo

# Retrains the embedded UNet into runs/embedded/unet (copy it to src/sparke/embedded/weights/ to ship it).
# Needs a GPU: the shipped weights took 5 minutes on one H200; on 2 CPU cores a step takes tens of seconds.
RETRAIN_ARGS ?= --device cuda --steps 12000 --minutes 5
retrain: $(STAMP)
	$(BIN)/python -m sparke.embedded.train $(RETRAIN_ARGS)

bench-quick: $(STAMP)
	$(BIN)/sparke bench --quick --out runs/bench-quick

clean:
	rm -rf runs .pytest_cache .ruff_cache
