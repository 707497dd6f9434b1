#!/usr/bin/env bash
# The whole test suite: unit tests, offline golden tests and the live tests against every
# CPython 3.8-3.13 this machine has. One release build is shared with the demo and benchmarks.
# Tests run one at a time: the live tests time episodes against the target's own clock, and on
# a 2-core machine two of them at once (each a Python target plus a 1 kHz sampler) starve each
# other's samplers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release "$@" -- --test-threads=1
