# p2pmetricsd — developer entry points. `make run` and `make test` are the README's two commands:
# each installs what it needs (Debian packages, Python packages) before doing its job.

SHELL := /bin/bash
APT_PACKAGES := pkg-config libuv1-dev libsystemd-dev zlib1g-dev prometheus systemd python3 curl
# Test-only: pytest runs the integration tests; statsd and datadog are the real third-party clients.
PY_PACKAGES := pytest statsd datadog pyyaml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SWIFT_BUILD_FLAGS ?=
ARGS ?=

.PHONY: all deps build release run test test-swift test-c test-integration clean bench

all: build

## Installs the Debian and Python packages the daemon and its tests need (once).
deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@python3 -c "import pytest, statsd, datadog, yaml" 2>/dev/null || { \
		python3 -m pip --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-pip >/dev/null; \
		echo "installing Python packages: $(PY_PACKAGES)"; \
		python3 -m pip install -q $(PY_PACKAGES) 2>/dev/null || python3 -m pip install -q --break-system-packages $(PY_PACKAGES); }

build: deps
	swift build $(SWIFT_BUILD_FLAGS)

release: deps
	swift build -c release

## Builds and runs the sidecar in the foreground (Ctrl-C stops it). Extra flags: make run ARGS="--listen 0.0.0.0:9478"
run: release
	.build/release/p2pmetricsd $(ARGS)

## Runs every test: Swift unit tests, C client tests (plain and sanitized), integration tests
## against the built binary, a real Prometheus and systemd's tools.
test: build
	$(MAKE) test-swift
	$(MAKE) test-c
	$(MAKE) test-rust
	$(MAKE) test-integration

test-swift:
	swift test $(SWIFT_BUILD_FLAGS)

test-c:
	$(MAKE) -C Clients/c test

## The Rust client (Clients/rust): its tests (vectors, encoder, end to end against the built
## daemon) and clippy. Uses the cargo on PATH (or ~/.cargo/bin), else installs Debian's.
CARGO = PATH="$$PATH:$$HOME/.cargo/bin" cargo
.PHONY: test-rust
test-rust:
	@$(CARGO) --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq cargo rust-clippy >/dev/null
	cd Clients/rust && $(CARGO) test --offline
	@if (cd Clients/rust && $(CARGO) clippy --version >/dev/null 2>&1); then \
		cd Clients/rust && $(CARGO) clippy --offline --all-targets -q -- -D warnings; \
	else echo "cargo clippy not installed: skipped"; fi

test-integration:
	python3 -m pytest -q -p no:cacheprovider Tests/integration

## Runs the performance matrix (release daemon, load tools, in-process benchmarks) and prints one
## table; see Benchmarks/bench for its knobs (BENCH_SECONDS, BENCH_SKIP_SWIFT, BENCH_PROFILE...).
bench: deps
	Benchmarks/bench

clean:
	rm -rf .build
	$(MAKE) -C Clients/c clean
