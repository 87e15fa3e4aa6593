# Two entry points for a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
SAM2_VERSION ?= 1.1.0
# PyPI's sam2 1.1.0 sdist (its files equal facebookresearch/sam2 at commit 2b90b9f, though
# Meta did not upload it): installed only with this SHA-256, here and in the images.
SAM2_SHA256 := 7e0ea252d43c10d853e3acfce0b5770ac683c30481bd6de311300e9d44f45b74
# DeAOT (TRACKER_BACKEND=deaot): deaotpy without its dependencies, which would pull a CUDA
# torch through torchvision and a CUDA-only correlation extension; what inference imports
# needs neither.
DEAOTPY_VERSION ?= 1.11.0
STAMP := $(VENV)/.installed
# Bytecode caches go under .cache/, not into the function folder (Nuclio's build context).
export PYTHONPYCACHEPREFIX := $(CURDIR)/.cache/pycache

UI := ui-plugin
UI_STAMP := $(UI)/node_modules/.installed

.PHONY: install serve test lint bench clean ui-plugin ui-check

install: $(STAMP)

# torch first (a local CPU wheel where one is offered), then everything else
# constrained to that torch, then sam2 built against it without an isolated
# build env (which would download a CUDA torch) and without its torchvision.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt
	printf 'sam2==$(SAM2_VERSION) --hash=sha256:$(SAM2_SHA256)\n' > $(VENV)/sam2-requirement.txt
	SAM2_BUILD_CUDA=$${SAM2_BUILD_CUDA:-0} $(PIP) install --quiet --no-build-isolation --no-deps \
		--require-hashes -c constraints.txt -r $(VENV)/sam2-requirement.txt
	$(PIP) install --quiet --no-deps deaotpy==$(DEAOTPY_VERSION)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import torch, sam2, redis, safetensors, cv2, nuclio_sdk, aot; print('torch', torch.__version__)"
	touch $(STAMP)

serve: install
	$(PY) serve.py

test: install ui-check
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

# The CVAT UI plugin: its pinned toolchain from the lockfile (npm registry).
$(UI_STAMP): $(UI)/package.json $(UI)/package-lock.json
	cd $(UI) && npm ci --no-audit --no-fund --loglevel=error
	touch $(UI_STAMP)

# The plugin as one plain script for the stock CVAT UI; its path is the last line.
ui-plugin: $(UI_STAMP)
	@cd $(UI) && node build.mjs

# Type check, lint and the logic tests (the browser test runs in pytest).
ui-check: $(UI_STAMP)
	cd $(UI) && npm run --silent typecheck && npm run --silent lint && npm test --silent

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m bench.run_benchmark

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(UI)/node_modules $(UI)/build $(UI)/dist
