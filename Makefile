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

.PHONY: setup setup-dev browser repro test clean lock
# `make repro` needs only the pipeline's own dependencies; `make test` adds the test extras (Ray, the S3
# server, the HTTP service, hypothesis, Playwright) and Debian's chromium for the browser test.
setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# constraints.txt pins every other package to the set CI tested, so pip resolves without backtracking
# (unpinned, pip 23 spent over 90 minutes walking aiobotocore/boto3 releases).
# pip compiles each installed module to bytecode on one core; --no-compile, then compileall on every core
# (-j 0) does the same work in less time (a fresh venv on 2 cores: 134 s -> 115 s). Files that do not compile
# are left to the interpreter, as pip leaves them.
PIP := $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt
COMPILE := $(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	$(COMPILE)
	touch $@

# After changing the dependencies in pyproject.toml: install unpinned once, then record the result.
lock:
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	{ sed -n 1,2p constraints.txt; $(VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

# The browser test drives Debian's chromium (Playwright's own browser download is not used). Installed when
# we are root and it is missing; elsewhere the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "make browser: no chromium installed; the browser test will skip"

repro: setup
	dvc repro

test: setup-dev browser
	pytest -q

clean:
	rm -rf $(VENV)
