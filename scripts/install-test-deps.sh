#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine: one script per concern in
# scripts/deps/, run in name order. Each prints what it could not install; the tests that need
# it then skip with a visible SKIPPED line. 00-pythons.sh runs first: it creates the get-python
# interpreter trees that later scripts (causes.sh) install packages into.
set -uo pipefail
cd "$(dirname "$0")/.."
for part in scripts/deps/*.sh; do
  bash "$part"
done
