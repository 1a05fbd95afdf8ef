# Two commands do everything on a fresh machine:  `make repro`  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
# torch is installed on its own, pinned, before the project: where a CPU wheel of this version is on
# disk pip takes it; elsewhere pip takes the index's default Linux build (CUDA). Override with
# `make setup TORCH=torch==X.Y.Z` (or a CPU/GPU build of your choice).
TORCH ?= torch==2.13.0

export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup repro test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

repro: setup
	dvc repro

test: setup
	pytest -q

clean:
	rm -rf $(VENV)
