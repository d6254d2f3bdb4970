# p2pmetricsd — developer entry points. `make run` and `make test` are the README's two commands:
# each installs what it needs (Debian packages, Python packages) before doing its job.

SHELL := /bin/bash
APT_PACKAGES := pkg-config libuv1-dev libsystemd-dev zlib1g-dev prometheus systemd python3 curl iproute2 util-linux
# Packaging and the tests on a real Debian under systemd: dpkg-dev (dpkg-shlibdeps), lintian,
# debootstrap (the node's root file system), systemd-container (systemd-nspawn), iproute2 (the
# cluster test's network namespaces).
APT_PACKAGES += dpkg-dev lintian debootstrap systemd-container iproute2
# Test-only: pytest runs the integration tests; statsd and datadog are the real third-party clients.
PY_PACKAGES := pytest statsd datadog pyyaml opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SWIFT_BUILD_FLAGS ?=
ARGS ?=

.PHONY: all deps build release run test test-swift test-c test-integration clean bench \
        version check-version install uninstall deb

# ---- One version ---------------------------------------------------------------------------
# VERSION is the only place the release version is written. `make version` copies it into the
# daemon's source (--version, p2pmetricsd_build_info) and the C header (P2PM_VERSION); the C
# Makefile reads it for the shared library and the .pc file, `make deb` for the package, and
# Tests/integration/test_deploy.py checks that all of them agree.
VERSION := $(shell cat VERSION)
VERSION_SWIFT := Sources/p2pmetricsd/Version.swift
C_HEADER := Clients/c/p2pmetrics.h

all: build

## Installs the Debian and Python packages the daemon and its tests need (once).
deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@python3 -c "import pytest, statsd, datadog, yaml, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http" 2>/dev/null || { \
		python3 -m pip --version >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-pip >/dev/null; \
		echo "installing Python packages: $(PY_PACKAGES)"; \
		python3 -m pip install -q $(PY_PACKAGES) 2>/dev/null || python3 -m pip install -q --break-system-packages $(PY_PACKAGES); }

build: deps check-version
	swift build $(SWIFT_BUILD_FLAGS)

## The release daemon: the Swift runtime is linked in (--static-swift-stdlib), so it runs on a
## node with only Debian's runtime libraries (libuv1, libsystemd0, zlib1g, libc6, libstdc++6).
RELEASE_BIN := .build/release/p2pmetricsd
release: deps check-version
	swift build -c release --static-swift-stdlib --product p2pmetricsd

version:
	printf '%s\n' '// Generated from the top-level VERSION file by `make version`; do not edit (a test checks it).' \
	  '/// The release version of p2pmetricsd: `--version`, `p2pmetricsd_build_info` and the package.' \
	  'let p2pmetricsdVersion = "$(VERSION)"' > $(VERSION_SWIFT)
	sed -i 's/^#define P2PM_VERSION ".*"$$/#define P2PM_VERSION "$(VERSION)"/' $(C_HEADER)

check-version:
	@grep -qx 'let p2pmetricsdVersion = "$(VERSION)"' $(VERSION_SWIFT) && \
	 grep -qx '#define P2PM_VERSION "$(VERSION)"' $(C_HEADER) || \
	 { echo "VERSION ($(VERSION)) differs from $(VERSION_SWIFT) or $(C_HEADER): run make version" >&2; exit 1; }

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

## The seed's metrics from Swift through swift-otel's OTLP/HTTP exporter (Tests/otel-swift, its own
## package). Not part of `make test`: its first build (swift-otel, AsyncHTTPClient, SwiftNIO,
## BoringSSL) took 16 minutes on the shared 2-core machine, twice the budget a clean CI run allows.
.PHONY: test-swift-otel
test-swift-otel: build
	swift build --package-path Tests/otel-swift --product seed-otel
	P2PM_SWIFT_OTEL=1 python3 -m pytest -q -p no:cacheprovider Tests/integration/test_otlp_swift_otel.py

## Runs the performance matrix (release daemon, load tools, in-process benchmarks) and prints one
## table; see Benchmarks/bench for its knobs (BENCH_SECONDS, BENCH_SKIP_SWIFT, BENCH_PROFILE...).
bench: deps
	Benchmarks/bench

# ---- Install on a node -----------------------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=]: the daemon, its systemd units (ExecStart= pointing
# at $(PREFIX)/bin), the sysctl.d and sysusers.d drop-ins, the C library (static and shared), its
# header and .pc file, the man page, the docs, the Prometheus rules and the Grafana dashboard.
# make uninstall with the same PREFIX/DESTDIR removes exactly those files.
PREFIX ?= /usr/local
DESTDIR ?=
# systemd reads units from /usr/lib/systemd/system and /usr/local/lib/systemd/system, but
# sysctl.d and sysusers.d only from /usr/lib and /etc: a prefix other than /usr installs the
# drop-ins (and, for the same reason of precedence, the units) under /etc.
ifeq ($(PREFIX),/usr)
SYSTEMD_CONF_ROOT := /usr/lib
else
SYSTEMD_CONF_ROOT := /etc
endif
UNITDIR ?= $(SYSTEMD_CONF_ROOT)/systemd/system
SYSCTLDIR ?= $(SYSTEMD_CONF_ROOT)/sysctl.d
SYSUSERSDIR ?= $(SYSTEMD_CONF_ROOT)/sysusers.d
BINDIR := $(PREFIX)/bin
MANDIR := $(PREFIX)/share/man/man8
DOCDIR := $(PREFIX)/share/doc/p2pmetricsd
DATADIR := $(PREFIX)/share/p2pmetricsd
UNITS := p2pmetricsd.service p2pmetricsd.socket p2pmetricsd-http.socket
INSTALLED_FILES := $(BINDIR)/p2pmetricsd $(addprefix $(UNITDIR)/,$(UNITS)) \
	$(SYSCTLDIR)/60-p2pmetricsd.conf $(SYSUSERSDIR)/p2pmetricsd.conf $(MANDIR)/p2pmetricsd.8.gz \
	$(DOCDIR)/README.md $(DOCDIR)/contrib/README.md $(DOCDIR)/PROTOCOL.md \
	$(DATADIR)/prometheus/scrape.yml $(DATADIR)/prometheus/p2p-recording.rules.yml \
	$(DATADIR)/prometheus/p2p-alerts.rules.yml $(DATADIR)/prometheus/agent.yml \
	$(DATADIR)/prometheus/central.yml $(DATADIR)/grafana/p2p-transfers.json
# The directories that belong to p2pmetricsd alone (removed by uninstall when empty).
OWN_DIRS := $(DATADIR)/prometheus $(DATADIR)/grafana $(DATADIR) $(DOCDIR)/contrib $(DOCDIR)

install: release
	$(MAKE) -C Clients/c install PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)
	install -D -m 0755 $(RELEASE_BIN) $(DESTDIR)$(BINDIR)/p2pmetricsd
	install -d $(DESTDIR)$(UNITDIR)
	for u in $(UNITS); do \
	  sed 's|/usr/local/bin/p2pmetricsd |$(BINDIR)/p2pmetricsd |g' contrib/systemd/$$u \
	    > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	grep -q '^ExecStart=$(BINDIR)/p2pmetricsd ' $(DESTDIR)$(UNITDIR)/p2pmetricsd.service
	install -D -m 0644 contrib/sysctl.d/60-p2pmetricsd.conf $(DESTDIR)$(SYSCTLDIR)/60-p2pmetricsd.conf
	install -D -m 0644 contrib/sysusers.d/p2pmetricsd.conf $(DESTDIR)$(SYSUSERSDIR)/p2pmetricsd.conf
	install -d $(DESTDIR)$(MANDIR)
	sed 's/@VERSION@/$(VERSION)/' contrib/man/p2pmetricsd.8 | gzip -9n > $(DESTDIR)$(MANDIR)/p2pmetricsd.8.gz
	chmod 0644 $(DESTDIR)$(MANDIR)/p2pmetricsd.8.gz
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 contrib/README.md $(DESTDIR)$(DOCDIR)/contrib/README.md
	install -D -m 0644 Clients/PROTOCOL.md $(DESTDIR)$(DOCDIR)/PROTOCOL.md
	install -d $(DESTDIR)$(DATADIR)/prometheus $(DESTDIR)$(DATADIR)/grafana
	install -m 0644 contrib/prometheus/scrape.yml contrib/prometheus/p2p-recording.rules.yml \
	  contrib/prometheus/p2p-alerts.rules.yml contrib/prometheus/agent.yml \
	  contrib/prometheus/central.yml $(DESTDIR)$(DATADIR)/prometheus/
	install -m 0644 contrib/grafana/p2p-transfers.json $(DESTDIR)$(DATADIR)/grafana/
	@# The loader cache, so that programs linked with pkg-config --libs p2pmetrics run as they are.
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then ldconfig; fi

uninstall:
	$(MAKE) -C Clients/c uninstall PREFIX=$(PREFIX) DESTDIR=$(DESTDIR)
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_FILES))
	for d in $(OWN_DIRS); do [ ! -d $(DESTDIR)$$d ] || rmdir --ignore-fail-on-non-empty $(DESTDIR)$$d; done
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then ldconfig; fi

# ---- Debian package ----------------------------------------------------------------------------
# make deb: dist/p2pmetricsd_$(VERSION)_$(ARCH).deb, built with dpkg-deb from `make install
# PREFIX=/usr` into a staging tree plus contrib/debian/ (maintainer scripts, copyright); Depends:
# from dpkg-shlibdeps on the binaries. See README.md, "Install on a node".
DEB_ARCH := $(shell dpkg --print-architecture)
DEB_FILE := dist/p2pmetricsd_$(VERSION)_$(DEB_ARCH).deb
DEB_ROOT := .build/deb/root

deb: release
	rm -rf .build/deb && mkdir -p $(DEB_ROOT) dist
	$(MAKE) install PREFIX=/usr DESTDIR=$(CURDIR)/$(DEB_ROOT)
	contrib/debian/build-deb $(CURDIR)/$(DEB_ROOT) $(VERSION) $(DEB_ARCH) $(DEB_FILE)

clean:
	rm -rf .build dist
	$(MAKE) -C Clients/c clean
