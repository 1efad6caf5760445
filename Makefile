# Two commands for a new user: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo
# pytest-xdist processes for `make test` (0: one process). Tests of one file share a process (--dist
# loadfile): their module fixtures are made once, and the real-Nextflow tests never run side by side.
TEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(BIN)/linumpy-motor synth $(DEMO)/input --slices 3 --grid 6 7 --tile 8 160 160 --seed 1
	$(BIN)/linumpy-motor run $(DEMO)/input $(DEMO)/output
	@echo ""
	@echo "Demo results are in $(DEMO)/output (QC report: $(DEMO)/output/report/report.html)"

# Lint and type checks first (configured in pyproject.toml), then the test suite.
test: install lint
	PATH="$(CURDIR)/bin:$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run_all.py --out bench/results.md

clean:
	rm -rf $(DEMO) bench/_work .pytest_cache .hypothesis .mypy_cache .ruff_cache
