# lwmm-lab: `make lab` opens the lab, `make test` runs every test. Both set up .venv first.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed-stamp
CHROMIUM := /usr/bin/chromium
SETTINGS := $(CURDIR)/lwmm_lab/lab_settings

.PHONY: setup lab zoo test lint format browser bench gpu-wheels peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Build the model zoo if it is missing or unfinished (resumable), then open the quickstart.
# Jupyter refuses to run as root unless told to (containers and CI machines often are root).
lab: zoo
	cd notebooks && ../$(BIN)/jupyter lab 01_quickstart.ipynb --LabApp.app_settings_dir=$(SETTINGS) \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

zoo: setup
	$(BIN)/lwmm zoo build

# Every test, the real-browser one included (it needs Debian's Chromium; never downloaded).
test: setup lint browser
	LWMM_REQUIRE_BROWSER=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check lwmm_lab tests benchmarks
	$(BIN)/ruff format --check lwmm_lab tests benchmarks

format: setup
	$(BIN)/ruff format lwmm_lab tests benchmarks
	$(BIN)/ruff check --fix lwmm_lab tests benchmarks

browser:
	@test -x $(CHROMIUM) || { \
	  echo "installing Debian's chromium for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "lwmm-lab: the browser test needs $(CHROMIUM): apt install chromium" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

bench: setup
	$(BIN)/python benchmarks/merge.py
	$(BIN)/python benchmarks/scenes.py
	$(BIN)/python benchmarks/analysis.py
	$(BIN)/python benchmarks/widgets.py

# For benchmarks/gpu.sh on a machine whose Python has its own CUDA torch and no package index:
# wheels (CPython 3.12, x86-64 Linux) of what such a Python lacks, at the versions .venv has.
# Afresh each time: two versions of one package in .whl would stop the install there.
gpu-wheels: setup
	rm -rf .whl
	$(BIN)/python benchmarks/gpu_wheels.py --dest .whl

# lwmm's methods against FusionBench's and mergekit's on the same inputs. The peers pull in
# transformers and lightning, so they get their own environment on top of .venv's packages.
PEERS := .venv-peers
peers: setup
	test -x $(PEERS)/bin/python || $(BIN)/python -m venv $(PEERS)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	  "$$($(PEERS)/bin/python -c 'import site; print(site.getsitepackages()[0])')/lwmm-venv.pth"
	$(PEERS)/bin/pip install --quiet fusion-bench mergekit
	PYTHONPATH=$(CURDIR) $(PEERS)/bin/python benchmarks/peers.py

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .ruff_cache .hypothesis artifacts .whl
