#!/usr/bin/env bash
# ecosystem: what the tests of monitor, pprof and the wheel need. Prometheus (the live scrape
# test), Go (its `go tool pprof` reads our profiles), and maturin with patchelf (the wheel test,
# scripts/test_wheel.sh). A tool that cannot be installed makes its tests print SKIPPED.
set -uo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >/dev/null 2>&1 \
    || echo "install-test-deps: ${missing[*]} could not be installed (the monitor/pprof tests that need them will skip)"
fi
if ! python3 -m maturin --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "maturin[patchelf]>=1.5,<2" \
    || echo "install-test-deps: maturin could not be installed (the wheel test will skip)"
fi
