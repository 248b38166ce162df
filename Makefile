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

# Trains the MA-SNN N-MNIST example with TCSA attention and without (vanilla) on the bundled real
# N-MNIST subset (1,000 train / 100 test samples) on the Cranelift CPU backend and prints the
# paper-style comparison table. BACKEND=interp runs the reference interpreter instead.
EPOCHS ?= 3
BACKEND ?= cpu
run: build
	$(SNNC) check examples/*.snn
	$(SNNC) compare examples/nmnist.snn:NMNISTTCSA examples/nmnist.snn:NMNISTVanilla \
		--epochs $(EPOCHS) --backend $(BACKEND) --out runs/compare-$$(date +%Y%m%d-%H%M%S)

test: deps
	cargo test --workspace --all-targets

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
