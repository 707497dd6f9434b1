#!/usr/bin/env bash
# causes: the Python packages the blocking-cause tests block in (tests/py/causes.py): SQLAlchemy
# (a sync session on sqlite and on PostgreSQL), psycopg2, PyYAML, FastAPI's encoder and pydantic.
#
# - every pyenv CPython 3.8-3.13: `pip install` (pip picks the newest release each supports);
# - the Debian builds of /work/shared/tools/get-python (/opt/loopspy-pythons/<minor>), which have
#   no pip: `pip --target` from this machine's python3 into the tree's own dist-packages
#   (usr/lib/python3/dist-packages, already on their sys.path), one package at a time with
#   binary wheels only, so a package without a wheel for that version is the only one missing.
# A package that cannot be installed is reported; its tests print a SKIPPED line.
set -uo pipefail
root="${PYENV_ROOT:-$HOME/.pyenv}"
PACKAGES=(sqlalchemy pyyaml fastapi pydantic psycopg2-binary)
MODULES="sqlalchemy, yaml, fastapi, pydantic, psycopg2"

for py in "$root"/versions/3.{8,9,10,11,12,13}.*/bin/python3; do
  [ -x "$py" ] || continue
  if "$py" -c "import $MODULES" 2>/dev/null; then continue; fi
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${PACKAGES[@]}" \
    || echo "install-test-deps: some of ${PACKAGES[*]} could not be installed for $py (their cause tests will skip)"
done

for tree in "${LOOPSPY_PYTHONS:-/opt/loopspy-pythons}"/3.*; do
  minor=${tree##*/}
  py="$tree/usr/bin/python$minor"
  [ -x "$py" ] || continue
  if "$py" -c "import $MODULES" 2>/dev/null; then continue; fi
  dest="$tree/usr/lib/python3/dist-packages"
  mkdir -p "$dest"
  for pkg in "${PACKAGES[@]}"; do
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --target "$dest" --python-version "$minor" --only-binary=:all: --upgrade "$pkg" 2>/dev/null \
      || echo "install-test-deps: $pkg has no wheel for CPython $minor ($py; its cause tests will skip)"
  done
done
