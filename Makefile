# One virtual environment, created and filled on first use. uv resolves the standard torch +
# torchvision wheels from PyPI (the CPU-only torch wheel breaks torchvision, and so timm).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test quickstart clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e ".[dev,prior]"
	touch $@

# pytest's exit code 5 ("no tests collected", e.g. with -k) is not a failure.
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) || [ $$? -eq 5 ]

quickstart: setup
	$(BIN)/python -m distill.quickstart --output-dir runs/quickstart

clean:
	rm -rf $(VENV)
