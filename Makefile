# One command to run the stack, one to test it. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-dev run test bench clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: install  ## the whole stack on loopback (local AWS endpoint, web :3000, Flower :5555)
	$(PY) -m daas up

test: install-dev  ## the test suite (integration tests start their own processes on free ports)
	$(PY) -m pytest -ra

bench: install-dev  ## the benchmarks (README's performance tables)
	$(PY) -m daas bench
	$(PY) -m daas bench batch
	$(PY) -m daas bench scaling
	$(PY) -m daas bench simulate

clean:
	rm -rf $(VENV) .daas .pytest_cache
