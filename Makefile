# The two commands a newcomer needs: `make serve` and `make test`. Both build everything first.
# The lab (benchmarks/ and its tests) has its own targets: `make bench`, `make bench-test`.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
DEMO   := examples/digits/model

# `make serve` settings (docs/configuration.md): the HTTP port, the management and metrics APIs'
# addresses (`none`: no such API), the ZeroMQ client endpoint and the run directory (lock files,
# log, local sockets, token keys, snapshots, extracted archives; empty: zerobatch's default,
# /tmp/zerobatch-UID).
HTTP_PORT ?= 8080
MANAGEMENT_ADDRESS ?= http://127.0.0.1:8081
METRICS_ADDRESS ?= http://127.0.0.1:8082
ZMQ_ADDRESS ?= tcp://127.0.0.1:9500
RUN_DIR ?=

.PHONY: all build demo serve test chromium lint docs fuzz bench bench-test package-test clean

all: build

$(STAMP): requirements-dev.txt setup.py pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

# An editable install: the repository's broker/, worker/ and api/ are zerobatch.broker,
# zerobatch.worker and zerobatch.api (setup.py maps them), with the compiled aggregator in place.
build: $(STAMP)
	$(VPY) setup.py -q build_ext --inplace
	$(VPY) -m pip install -q --no-build-isolation --no-deps -e .

demo: build
	$(VPY) -m examples.digits.train --out $(DEMO)

serve: demo
	$(VENV)/bin/zerobatch start --foreground --models digits=$(DEMO) --http-port $(HTTP_PORT) \
		--management-address $(MANAGEMENT_ADDRESS) --metrics-address $(METRICS_ADDRESS) \
		--client-address $(ZMQ_ADDRESS) \
		$(if $(RUN_DIR),--run-dir $(RUN_DIR))

test: demo chromium
	ZEROBATCH_REQUIRE_COMPILED=1 $(VPY) -m pytest

# The dashboard's browser test (tests/integration/test_dashboard.py) drives headless Chromium:
# as root, Debian's package is installed when none is found; otherwise this says how, and the
# test is skipped (CHROMIUM=/path/to/chrome picks another executable).
chromium:
	@command -v $${CHROMIUM:-chromium} >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && apt-get install -y -q --no-install-recommends chromium; \
	else \
		echo "chromium is not installed: the dashboard's browser test will be skipped" \
			"(Debian: sudo apt-get install --no-install-recommends chromium)"; \
	fi

lint: build
	$(VENV)/bin/ruff check .

# The HTTP APIs' reference pages, docs/api/*.md, rendered from api/openapi/*.json (run it after
# editing the JSON; tests/unit/test_api_docs.py fails while a page is stale).
docs: build
	$(VPY) -m zerobatch.api.api_docs --out docs/api

# Coverage-guided fuzzing (docs/fuzzing.md): each atheris target in tests/fuzz/ for
# FUZZ_SECONDS (the four take about 40 minutes at the default), corpus and crash files in
# .fuzz/<target>/; `make test` runs 3 s of each.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=

fuzz: build
	$(VPY) -m tests.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Build a wheel from a clean copy of the committed tree with pip's own isolated build, install
# it in a fresh venv and serve the demo from a hostile directory (tests/package/check_wheel.sh).
package-test: demo
	bash tests/package/check_wheel.sh

# The comparison harness (docs/benchmarks.md): zerobatch, TorchServe, LitServe and the floor.
# wrk is optional (the harness falls back to its own generator); Debian's package when root.
bench: build
	command -v wrk >/dev/null || (test "$$(id -u)" = 0 && apt-get install -y -q wrk) || true
	$(VPY) -m benchmarks run $(BENCH_ARGS)

# The lab's own tests: the harness, the load generators, the peers (installs TorchServe and
# LitServe into .bench/), the A/B runner (git worktrees). Slow, and not part of `make test`.
bench-test: demo
	$(VPY) -m pytest tests/bench

clean:
	rm -rf build *.egg-info csrc/*.c broker/*.so $(DEMO)/digits_cnn.pt
