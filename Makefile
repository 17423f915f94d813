# The two commands of the README: `make quickstart` and `make test`.
# Both create .venv if missing and install the pinned set (constraints.txt) first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUICKSTART_OUT ?= runs/quickstart
# test processes (pytest-xdist; whole files per process, so module fixtures run once): 2 fits
# the 2-core CI machine, where most of a test's time is Ray and subprocess start-up
TEST_WORKERS ?= 2

.PHONY: install quickstart test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/raytune-periodic run configs/quickstart.yaml --storage-path $(abspath $(QUICKSTART_OUT))/ray
	$(BIN)/raytune-periodic compare quickstart --out $(QUICKSTART_OUT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/regularizers.py
	$(BIN)/python bench/tune_overhead.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
