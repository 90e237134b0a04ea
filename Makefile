# The two commands a new user runs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_DEV  := $(VENV)/.installed-dev
STAMP_BASE := $(VENV)/.installed-base
PYTEST_WORKERS ?= 2

.PHONY: demo test lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_BASE): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@ $(STAMP_BASE)

venv: $(STAMP_DEV)

demo: $(STAMP_BASE)
	$(PY) -m jaxflows.demo --out demo_out

test: $(STAMP_DEV)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=25 tests

lint: $(STAMP_DEV)
	$(VENV)/bin/ruff check .
	bash -n tpu_setup.sh

clean:
	rm -rf $(VENV) demo_out .pytest_cache
