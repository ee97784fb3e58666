# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
STDLIB := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

# torch goes in first and alone, pinned, so nothing later can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

# Until `genloop pull` and `genloop serve` land, the demo trains a byte-level BPE tokenizer on real
# text on this disk (the Python standard library's source), builds a model around it, and describes it.
demo: $(STAMP)
	$(BIN)/genloop tokenizer train $(STDLIB) --out .demo/tokenizer --vocab-size 8000 --max-mb 10
	$(BIN)/genloop tokenizer encode .demo/tokenizer "def greet(name): return f'Hello, {name}!'"
	$(BIN)/genloop model init small .demo/small --tokenizer .demo/tokenizer --seed 0
	$(BIN)/genloop model info .demo/small

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
