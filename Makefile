# volcache: `make run` serves on 127.0.0.1:8470; `make test` installs what the tests need and
# runs them all. Cargo's build directory may live elsewhere (CARGO_TARGET_DIR); the built
# plugins always land in target/plugins/ here.
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo
PLUGIN_DIR := $(CURDIR)/target/plugins
TEST_PLUGIN_DIR := $(CURDIR)/target/test-plugins
export VOLCACHE_PLUGIN_DIR := $(PLUGIN_DIR)
export VOLCACHE_TEST_PLUGIN_DIR := $(TEST_PLUGIN_DIR)
# componentize-py and componentize-js, for Python and JavaScript plugins (outside the clone).
TOOLS_DIR ?= $(HOME)/.cache/volcache-tools
export VOLCACHE_COMPONENTIZE_PY := $(TOOLS_DIR)/py/bin/componentize-py
export VOLCACHE_COMPONENTIZE_JS := $(TOOLS_DIR)/js/node_modules/.bin/componentize-js
# The Python and JavaScript LRU plugins the policy benchmark compares.
POLYGLOT_DIR := $(CURDIR)/target/polyglot
export VOLCACHE_POLYGLOT_DIR := $(POLYGLOT_DIR)

.PHONY: all run test install deb plugins test-plugins plugin-tools polyglot-plugins deps lint bench fuzz fmt clean api-fuzz

all: plugins
	$(CARGO) build --release -p volcache

## Installs the release build: PREFIX (/usr/local), DESTDIR, SYSCONFDIR (/etc), STATEDIR
## (/var/lib/volcache), UNITDIR ($(PREFIX)/lib/systemd/system). See scripts/install.sh.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
STATEDIR ?= /var/lib/volcache
install: all
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) SYSCONFDIR=$(SYSCONFDIR) STATEDIR=$(STATEDIR) scripts/install.sh "$${CARGO_TARGET_DIR:-target}/release/volcache" $(PLUGIN_DIR)

## The Debian package, built with RBD support -> target/deb/volcache_<version>_<arch>.deb.
deb: plugins
	$(CARGO) build --release --locked -p volcache --features rbd
	scripts/build-deb.sh "$${CARGO_TARGET_DIR:-target}/release/volcache" $(PLUGIN_DIR) $(CURDIR)/target/deb

## Every crate in plugins/ -> target/plugins/<name>.wasm (a component).
plugins:
	scripts/build-plugins.sh plugins $(PLUGIN_DIR)

## The adversarial plugins the tests load -> target/test-plugins/<name>.wasm.
test-plugins:
	scripts/build-plugins.sh tests/plugins $(TEST_PLUGIN_DIR)

## componentize-py (PyPI, in a venv) and componentize-js (npm), pinned, under TOOLS_DIR.
plugin-tools:
	VOLCACHE_TOOLS_DIR=$(TOOLS_DIR) scripts/plugin-tools.sh >/dev/null

## Python and JavaScript LRUs scaffolded by `volcache plugin new` -> target/polyglot/lru-{py,js}.wasm.
polyglot-plugins: plugin-tools
	$(CARGO) build --release --locked -p volcache
	scripts/build-polyglot.sh "$${CARGO_TARGET_DIR:-target}/release/volcache" $(POLYGLOT_DIR)

## System packages the tests use (idempotent; needs root on a fresh machine).
deps:
	scripts/install-deps.sh

run: plugins
	$(CARGO) run --release -p volcache -- serve

# The tests build every backend; the RBD ones run against a throwaway single-node Ceph cluster
# (scripts/ceph-cluster.sh) that `make test` starts on 127.0.0.1 and always stops.
TEST_FEATURES := --features volcache/rbd
CEPH_DIR ?= $(CURDIR)/target/ceph-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --workspace --all-targets --locked $(TEST_FEATURES) -- -D warnings

test: deps plugins test-plugins plugin-tools lint
	$(CARGO) test --workspace --all-targets --locked $(TEST_FEATURES) --no-run
	VOLCACHE_TEST_CEPH_CONF=$(CEPH_DIR)/ceph.conf scripts/ceph-cluster.sh run $(CEPH_DIR) \
		$(CARGO) test --workspace --all-targets --locked $(TEST_FEATURES)
	scripts/api-fuzz.sh "$${CARGO_TARGET_DIR:-target}/debug/volcache"

## Schema-driven fuzzing of the HTTP API (schemathesis in a venv outside the clone).
api-fuzz:
	$(CARGO) build --locked -p volcache
	scripts/api-fuzz.sh "$${CARGO_TARGET_DIR:-target}/debug/volcache"

## Benchmarks print tables of side-by-side ratios; see README.md.
bench: plugins polyglot-plugins
	$(CARGO) bench -p volcache --bench policy
	$(CARGO) bench -p volcache --bench lab
	$(CARGO) bench -p volcache --bench convert
	$(CARGO) bench -p volcache --bench miss
	$(CARGO) bench -p volcache --bench cache
	$(CARGO) bench -p volcache --bench storm
	$(CARGO) bench -p volcache --bench api
	$(CARGO) bench -p volcache --features rbd --bench rbd --no-run
	OBJECTSTORE=bluestore VOLCACHE_TEST_CEPH_CONF=$(CURDIR)/target/ceph-bench/ceph.conf \
		scripts/ceph-cluster.sh run $(CURDIR)/target/ceph-bench $(CARGO) bench -p volcache --features rbd --bench rbd

## Fuzz the qcow2 parser and the API bodies for FUZZ_SECONDS each (needs rustup nightly; installs cargo-fuzz).
FUZZ_SECONDS ?= 120
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	scripts/fuzz-seeds.sh fuzz/corpus/qcow2
	cd fuzz && $(CARGO) +nightly fuzz run qcow2 corpus/qcow2 -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024
	cd fuzz && $(CARGO) +nightly fuzz run api -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048

fmt:
	$(CARGO) fmt --all

clean:
	rm -rf target
