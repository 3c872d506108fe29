# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that lies on these machines; override with TORCH="torch>=2.6" elsewhere.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast test-slow test-all lint bench docs clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench,dashboard,ray,docs]"
	touch $@

demo: install
	$(VENV)/bin/workbench demo

# ruff, and the import contract (pyproject.toml [tool.importlinter]): imports run one way down the packages
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The default suite, without the slow tests (under ~10 minutes on 2 cores); `make test-slow` runs those (each over
# ~60 s: the demo end to end, the built wheel, the notebooks, PPO learning, kill-and-resume, the slow probe sweeps);
# CI runs both, one after the other; `make test-all` runs everything at once. `make test-fast` is `make test`.
test: lint
	$(VENV)/bin/pytest -m "not slow"

test-fast: test

test-slow: install
	$(VENV)/bin/pytest -m slow

test-all: lint
	$(VENV)/bin/pytest

# The API reference (build/api/index.html) from the docstrings; fails on a pdoc warning or a stale reference.
docs: install
	$(PY) docs/build_api.py --out build/api

bench: install
	$(VENV)/bin/workbench bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
