# The two set-up commands of the README. Both install what a fresh Debian machine lacks first.
#   make run   — the main job on the bundled example data
#   make test  — the whole test suite
SHELL := /bin/bash
SNNC := target/release/snnc

.PHONY: run test deps build fmt lint

deps:
	@bash .ci/install-deps.sh

build: deps
	cargo build --release -p snnc

run: build
	$(SNNC) check examples/*.snn
	$(SNNC) build examples/gesture.snn --model GestureTCSA --emit ir

test: deps
	cargo test --workspace --all-targets

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
