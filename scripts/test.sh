#!/usr/bin/env bash
# The whole test suite: unit tests, offline golden tests and the live tests against every
# CPython 3.8-3.13 this machine has. One release build is shared with the demo and benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release "$@"
