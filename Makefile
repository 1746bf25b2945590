# rust_ksm: the two commands are `make run` and `make check` (see README.md).
# The module itself is built by Kbuild (see Kbuild); this file only drives
# the scripts, which install dependencies and build the kernel as needed.

.PHONY: all module deps kernel run check bench stress clippy fmt clean

all: module

module:
	scripts/module-build

deps:
	scripts/deps

kernel:
	scripts/kernel-build

run:
	scripts/demo

check:
	scripts/check

bench:
	scripts/bench

# DURATION=seconds (300), FAULTS=1: see scripts/stress.
stress:
	scripts/stress

clippy:
	scripts/module-build clippy

fmt:
	rustfmt --edition 2021 rust_ksm.rs

clean:
	scripts/module-build clean
