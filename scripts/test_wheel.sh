#!/usr/bin/env bash
# The pip install path, end to end: build the manylinux wheel with `maturin build --release`,
# install it into a fresh venv, and run `loopspy --version` and a short `record` of the demo
# service from there; then `pip install .` from this checkout into another fresh venv.
# Both builds reuse target/ (CARGO_TARGET_DIR), so after `cargo test --release` they only
# relink the binary. Prints SKIPPED when maturin is missing (scripts/deps/ecosystem.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if ! "$python" -m maturin --version >/dev/null 2>&1; then
  echo "SKIPPED: maturin is not installed (scripts/deps/ecosystem.sh installs it): wheel test"
  exit 0
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

"$python" -m maturin build --release --quiet --out "$work/wheels"
wheel=$(ls "$work"/wheels/loopspy-*.whl)
case "$wheel" in
  *manylinux*) ;;
  *) echo "wheel test: $wheel is not a manylinux wheel"; exit 1 ;;
esac
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"
"$work/venv/bin/loopspy" --version
# The installed binary must run on its own: every library it needs is the system's or in the wheel.
if ldd "$work/venv/bin/loopspy" | grep -q "not found"; then
  ldd "$work/venv/bin/loopspy"; echo "wheel test: the installed loopspy misses a library"; exit 1
fi
(cd "$work" && "$work/venv/bin/loopspy" record --duration 3 -o "$work/demo.svg" --episodes "$work/episodes.jsonl" \
  -- "$work/venv/bin/python" "$OLDPWD/examples/demo_app.py" --seconds 2 >/dev/null 2>"$work/record.err") \
  || { cat "$work/record.err"; echo "wheel test: record from the venv failed"; exit 1; }
grep -q "<svg" "$work/demo.svg" || { echo "wheel test: no flame graph written"; exit 1; }
[ -s "$work/episodes.jsonl" ] || { cat "$work/record.err"; echo "wheel test: no episodes recorded"; exit 1; }
echo "wheel test: $(basename "$wheel") installs and records ($(wc -l <"$work/episodes.jsonl") episodes)"

"$python" -m venv "$work/venv2"
"$work/venv2/bin/pip" install --quiet --disable-pip-version-check .
"$work/venv2/bin/loopspy" --version
echo "wheel test: pip install . works; $(( $(date +%s) - start )) s in all"
