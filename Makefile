# lwmm-lab: `make lab` opens the lab, `make test` runs every test. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup lab test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	@echo "lwmm-lab is set up in $(VENV). The notebooks and widgets are not built yet;"
	@echo "until then use the engine: $(BIN)/lwmm merge --help, $(BIN)/lwmm inspect --help"

test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check lwmm_lab tests benchmarks
	$(BIN)/ruff format --check lwmm_lab tests benchmarks

format: setup
	$(BIN)/ruff format lwmm_lab tests benchmarks
	$(BIN)/ruff check --fix lwmm_lab tests benchmarks

bench: setup
	$(BIN)/python benchmarks/merge.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
