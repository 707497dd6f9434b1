#!/usr/bin/env bash
# base: install the Python packages the live tests use into every CPython 3.8-3.13 found under pyenv
# (and the default python3). A version without a wheel is reported, and its uvloop test skips.
set -uo pipefail
root="${PYENV_ROOT:-$HOME/.pyenv}"
for py in python3 "$root"/versions/3.{8,9,10,11,12,13}.*/bin/python3; do
  [ -x "$(command -v "$py")" ] || continue
  if "$py" -c "import uvloop, requests" 2>/dev/null; then continue; fi
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore uvloop requests \
    || echo "install-test-deps: uvloop or requests could not be installed for $py (their tests will skip)"
done

# tmux drives the live test of `loopspy top`.
if ! command -v tmux >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 \
    || echo "install-test-deps: tmux could not be installed (the live top test will skip)"
fi
