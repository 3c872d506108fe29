# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch that lies on these machines; override with TORCH="torch>=2.6" elsewhere.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench,dashboard,ray]"
	touch $@

demo: install
	$(VENV)/bin/workbench demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every test, slow ones included (they fit CI's time); `make test-fast` skips the slow ones.
test: lint
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not slow"

bench: install
	$(VENV)/bin/workbench bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
