# One command for each thing a newcomer does; every target installs first.
#   make demo    install, start pool-server on :50051, run test.py against it, keep serving
#   make test    install, lint, type-check and run the whole test suite (as root it
#                apt-gets the Debian packages some tests use: tools/system-packages)
#   make bench   install and print the core latency/throughput, job and memory figures
#                (the peer comparison: python -m bench, after pip install -e '.[bench]')
#   make proto   regenerate pool_proto/ from proto/*.proto

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKERS ?= 4
PORT ?= 50051

.PHONY: install system-packages demo serve test lint bench proto

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/pool-server --workers $(WORKERS) --port $(PORT) | \
	  { read -r line && echo "$$line" && POOL_SERVER=127.0.0.1:$(PORT) $(BIN)/python test.py \
	    && echo "serving on 127.0.0.1:$(PORT); Ctrl-C to stop"; cat; }

serve: install
	$(BIN)/pool-server --workers $(WORKERS) --port $(PORT)

lint: install
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

proto: install
	$(BIN)/python -m grpc_tools.protoc -Ipool_proto=proto --python_out=. \
	  --grpc_python_out=. --pyi_out=. proto/pool.proto proto/orca.proto proto/challenge.proto
