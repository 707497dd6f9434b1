#!/usr/bin/env bash
# Re-record the offline test fixtures (tests/fixtures/*.jsonl) from real runs of
# tests/py/scenarios.py under `loopspy record --format raw`, then derive the jitter/gap fixture.
# After re-recording, bless the golden files: LOOPSPY_BLESS=1 cargo test --release offline
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
cargo build --release --quiet
out=tests/fixtures
mkdir -p "$out"

record() { # name "scenario [args]" rate [script] [clock] [blocks]: with `blocks`, also keep the target's
  # own BLOCK lines (its measurements) in tests/fixtures/NAME.blocks.jsonl, for the offline tests
  local name=$1 scenario=$2 rate=$3 script=${4:-tests/py/scenarios.py} clock=${5:-probe} keep=${6:-} fifo dir
  dir=$(mktemp -d); fifo="$dir/go"; mkfifo "$fifo"
  # shellcheck disable=SC2086 # the scenario's own arguments follow its name
  "$python" "$script" $scenario <"$fifo" >"$dir/target.out" &
  local target=$!
  exec 7>"$fifo"
  # Wait for the target's READY line, attach, wait for loopspy's first sample, then say go.
  until grep -q READY "$dir/target.out" 2>/dev/null; do sleep 0.01; done
  target/release/loopspy record --pid "$target" --rate "$rate" --clock "$clock" --format raw -o "$out/$name.jsonl" 2>"$dir/loopspy.err" &
  local spy=$!
  until grep -q "sampling process" "$dir/loopspy.err" 2>/dev/null; do sleep 0.01; done
  echo go >&7; exec 7>&-
  wait "$target" || true
  wait "$spy"
  echo "$name: $(grep -c . "$out/$name.jsonl") lines; target said:"; grep BLOCK "$dir/target.out" || true
  if [ "$keep" = blocks ]; then sed -n 's/^BLOCK //p' "$dir/target.out" >"$out/$name.blocks.jsonl"; fi
  rm -rf "$dir"
}

record sleep_task sleep_task 200
record two_loops two_loops 200
record back_to_back back_to_back 200
record thread_ends thread_ends 200
record exit_mid_block exit_mid_block 200
record uvloop uvloop 200
record gil gil 200 tests/py/causes.py
record gil_held_regex regex 200 tests/py/causes.py
record gil_released_hashlib hashlib 200 tests/py/causes.py
# GIL starvation timed by a 5 ms heartbeat in the target (issue 10 §1): 16 MB base64 decodes.
record gil_base64 16 1000 tests/py/gil_base64.py probe blocks
record attached_mid_block blocked_at_attach 200 tests/py/scenarios.py probe blocks
record restart_loops restart_loops 200 tests/py/scenarios.py probe blocks
record idle idle 100
record tasks "tasks 60" 200 tests/py/reader_edges.py
# The kernel clock (run as root): boundaries from perf tracepoints, ticks only in long callbacks.
record kernel_sleep_task sleep_task 200 tests/py/scenarios.py kernel
record kernel_back_to_back back_to_back 200 tests/py/scenarios.py kernel
record kernel_gil gil 200 tests/py/causes.py kernel
"$python" scripts/derive_fixture.py "$out/sleep_task.jsonl" "$out/jitter_gaps.jsonl"
"$python" scripts/derive_fixture.py merge "$out/workers_merged.jsonl" "$out/sleep_task.jsonl" "$out/two_loops.jsonl"
# The demo service for 5 s at 100 Hz: many culprits and a 1.2 s hang (top view goldens).
target/release/loopspy record --rate 100 --format raw -o "$out/demo.jsonl" -- "$python" examples/demo_app.py --seconds 5 >/dev/null
# The demo before and after its fixes, back to back under the same load (the diff goldens).
target/release/loopspy record --rate 100 --format raw -o "$out/demo_before.jsonl" -- "$python" examples/demo_app.py --seconds 5 >/dev/null
target/release/loopspy record --rate 100 --format raw -o "$out/demo_fixed.jsonl" -- "$python" examples/demo_app.py --seconds 5 --fixed >/dev/null
