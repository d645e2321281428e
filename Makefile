# Two commands on a fresh machine:  `make demo` (main job)  and  `make test` (test suite).
# Each sets up .venv first (pinned installs from the package registry, then sample data).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.sparseyolo-installed

.PHONY: setup demo test lint bench-full clean
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m sparseyolo.data fetch
	$(PY) -c "from sparseyolo.sparse import _ext; _ext.load(required=True); print('compiled sparse kernels: ok')"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sparseyolo demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check sparseyolo tests
	$(VENV)/bin/ruff format --check sparseyolo tests

clean:
	rm -rf $(VENV) .cache
