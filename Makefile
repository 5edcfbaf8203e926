# Two entry points for a fresh machine: `make demo` (install, then RAVN-quantize ResNet-20 on CIFAR-10)
# and `make test` (install with dev tools, then lint and run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/resnet20-ravn-ptq-3bit.ravn

.PHONY: demo test test-long lint bench-baseline install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The local CPU build of torch first, so nothing can pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[search,report]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[all]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/ravn quantize --model resnet20 --method ravn --mode ptq --budget-bits 3 --out $(OUT)
	$(BIN)/ravn inspect $(OUT)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks

test: install-dev lint
	$(BIN)/pytest -q

# The tests that take minutes each (marked `long`), left out of `make test`.
test-long: install-dev
	$(BIN)/pytest -q -m long

bench-baseline: install
	$(BIN)/python benchmarks/baseline.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
