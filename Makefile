# The two commands a newcomer needs: `make serve` and `make test`. Both build everything first.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
DEMO   := examples/digits/model
PORT   ?= 8080

.PHONY: all build demo serve test lint bench clean

all: build

$(STAMP): requirements-dev.txt setup.py
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

build: $(STAMP)
	$(VPY) setup.py -q build_ext --inplace
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .

demo: build
	$(VPY) -m examples.digits.train --out $(DEMO)

serve: demo
	$(VENV)/bin/zerobatch start --foreground --models digits=$(DEMO) --http-port $(PORT)

test: demo
	ZEROBATCH_REQUIRE_COMPILED=1 $(VPY) -m pytest

lint: build
	$(VENV)/bin/ruff check .

# The comparison harness (docs/benchmarks.md): zerobatch, TorchServe, LitServe and the floor.
# wrk is optional (the harness falls back to its own generator); Debian's package when root.
bench: build
	command -v wrk >/dev/null || (test "$$(id -u)" = 0 && apt-get install -y -q wrk) || true
	$(VPY) -m benchmarks run $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info csrc/*.c broker/*.so $(DEMO)/digits_cnn.pt
