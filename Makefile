# One command for each thing a newcomer does; every target installs first.
#   make demo    install what running needs (pip install -e .), start pool-server on
#                :50051, run test.py against it, keep serving
#   make test    install the development toolchain too ('.[dev]'), lint, type-check and
#                run the whole test suite (as root it apt-gets the Debian packages some
#                tests use: tools/system-packages)
#   make bench   install and print the core latency/throughput, job and memory figures
#                (the peer comparison: python -m bench, after pip install -e '.[bench]')
#   make proto   regenerate pool_proto/ from proto/*.proto

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKERS ?= 4
PORT ?= 50051

.PHONY: install install-dev system-packages demo serve test lint bench proto

# What running needs: the server, the client, their dependencies.
install: $(VENV)/.installed-run

# That and the development toolchain (pytest, ruff, mypy, grpcio-tools, ...).
install-dev: $(VENV)/.installed

$(VENV)/.installed-run: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

demo: install
	$(BIN)/pool-server --workers $(WORKERS) --port $(PORT) | \
	  { read -r line && echo "$$line" && POOL_SERVER=127.0.0.1:$(PORT) $(BIN)/python test.py \
	    && echo "serving on 127.0.0.1:$(PORT); Ctrl-C to stop"; cat; }

serve: install
	$(BIN)/pool-server --workers $(WORKERS) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system-packages:
	tools/system-packages

test: lint system-packages
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.latency_throughput
	$(BIN)/python -m bench.jobs_throughput
	$(BIN)/python -m bench.many_clients

proto: install-dev
	$(BIN)/python -m grpc_tools.protoc -Ipool_proto=proto --python_out=. \
	  --grpc_python_out=. --pyi_out=. proto/pool.proto proto/orca.proto proto/challenge.proto
