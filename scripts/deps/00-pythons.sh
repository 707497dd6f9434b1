#!/usr/bin/env bash
# pythons: the interpreters the live tests run on besides pyenv's 3.8-3.13, with uvloop and
# requests for their tests (named 00- so it runs first: causes.sh installs into its trees):
# - Debian unstable's static 3.13, 3.14 and 3.15, installed by get-python (from ../shared/tools,
#   or $LOOPSPY_GET_PYTHON) under /opt/loopspy-pythons; their packages go into the tree's own
#   dist-packages directory, which is on their sys.path;
# - Debian's own static /usr/bin/python3 (3.11 on bookworm), whose packages come from apt.
# What cannot be installed is reported; the tests of that interpreter then skip with a SKIPPED line.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
get_python=${LOOPSPY_GET_PYTHON:-}
for candidate in "$repo/../shared/tools/get-python" "$repo/../../shared/tools/get-python" /work/shared/tools/get-python; do
  [ -n "$get_python" ] && break
  [ -x "$candidate" ] && get_python=$candidate
done
if [ -z "$get_python" ]; then
  echo "install-test-deps: get-python not found (set LOOPSPY_GET_PYTHON): Debian's 3.13/3.14/3.15 tests will skip"
else
  for minor in 3.13 3.14 3.15; do
    if ! py=$(bash "$get_python" "$minor"); then
      echo "install-test-deps: get-python $minor failed: its live tests will skip"
      continue
    fi
    site=$(dirname "$py")/../lib/python3/dist-packages
    mkdir -p "$site"
    "$py" -c "import uvloop, requests" 2>/dev/null && continue
    # These interpreters have no pip: this machine's python3 installs wheels built for them.
    for pkg in requests uvloop; do
      "$py" -c "import $pkg" 2>/dev/null && continue
      python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$site" --python-version "$minor" --only-binary=:all: "$pkg" \
        || echo "install-test-deps: no $pkg wheel for CPython $minor (its $pkg tests will skip)"
    done
  done
fi

# Debian's own python3: its packages come from Debian.
if [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c "import uvloop, requests" 2>/dev/null; then
  (apt-get update -qq && apt-get install -y -qq python3-uvloop python3-requests) >/dev/null 2>&1 \
    || echo "install-test-deps: python3-uvloop/python3-requests could not be installed for /usr/bin/python3 (its uvloop tests will skip)"
fi
