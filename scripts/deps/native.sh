#!/usr/bin/env bash
# native: libunwind, which the default build links for `--native` (C frames through py-spy's
# unwinder). Without it build with `cargo build --release --no-default-features`.
set -uo pipefail
if ! { [ -e /usr/include/libunwind.h ] || [ -e /usr/include/x86_64-linux-gnu/libunwind.h ]; }; then
  (apt-get update -qq && apt-get install -y -qq libunwind-dev) >/dev/null 2>&1 \
    || echo "install-test-deps: libunwind-dev could not be installed (build with --no-default-features)"
fi
