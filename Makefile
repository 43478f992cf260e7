# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv when it is missing (torch/torchvision are pinned to the releases that this
# project's machines install from local disk).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxrsem-installed

# Real data for the opt-in real-data tests: ../shared/data when it exists.
SHARED_DATA ?= $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/README.md),)
export CXRSEM_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: demo test lint bench clean browser

# The two plugin packages in plugins/ are installed like any third-party plugin (their own
# pyproject and entry points); the test suite exercises them through the registry.
PLUGINS := plugins/cxrsem-example plugins/cxrsem-xrv

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

# runs/quickstart is the demo's own folder: a rerun replaces the previous demo.
demo: $(STAMP)
	$(VENV)/bin/cxrsem quickstart --out runs/quickstart --overwrite

# The report's browser test needs Debian's Chromium; install it when missing (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium is not installed; the browser test will be skipped"; fi; }

test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check cxrsem tests benchmarks $(PLUGINS)

bench: $(STAMP)
	$(PY) benchmarks/bench_phantom.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
