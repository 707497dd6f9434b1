#!/usr/bin/env python3
"""Wall time of `loopspy dump` on a loop with many pending tasks (issue 11: "dump at scale").

Starts tests/py/scale_tasks.py `many N` (N idle tasks awaiting asyncio.sleep, plus one in a
different chain), waits for its READY line, then runs each variant of dump (grouped text,
grouped --json, --all-tasks --json) --repeats times, interleaved, against the same target.
Each run's wall time includes attaching (parsing the binary's symbols), as a user sees it.
Prints per variant the median, min and max in ms, and the output's size in lines.

    python3 scripts/bench_dump.py [--tasks 20000] [--repeats 5] [--python python3.11]

Needs a release build (cargo build --release).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
TARGET = os.path.join(ROOT, "tests", "py", "scale_tasks.py")

VARIANTS = [
    ("text, grouped", []),
    ("json, grouped", ["--json"]),
    ("json, --all-tasks", ["--json", "--all-tasks"]),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()

    target = subprocess.Popen(
        [args.python, TARGET, "many", str(args.tasks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = target.stdout.readline()
        if not line.startswith("READY"):
            sys.exit("target did not start: %r" % line)
        pending = json.loads(line.split(" ", 1)[1])["pending"]
        times = {name: [] for name, _ in VARIANTS}
        lines = {}
        for _ in range(args.repeats):
            for name, extra in VARIANTS:
                t0 = time.perf_counter()
                out = subprocess.run(
                    [LOOPSPY, "dump", "--pid", str(target.pid)] + extra,
                    capture_output=True,
                    text=True,
                )
                times[name].append((time.perf_counter() - t0) * 1000.0)
                if out.returncode != 0:
                    sys.exit("dump failed: %s" % out.stderr.strip())
                lines[name] = out.stdout.count("\n")
        print("python %s, %d pending tasks, %d runs each (interleaved)"
              % (args.python, pending, args.repeats))
        print("%-20s %9s %9s %9s %9s" % ("variant", "median ms", "min", "max", "lines"))
        for name, _ in VARIANTS:
            t = times[name]
            print("%-20s %9.0f %9.0f %9.0f %9d"
                  % (name, statistics.median(t), min(t), max(t), lines[name]))
    finally:
        try:
            target.stdin.write("go\n")
            target.stdin.flush()
        except OSError:
            pass
        try:
            target.wait(timeout=10)
        except subprocess.TimeoutExpired:
            target.kill()


if __name__ == "__main__":
    main()
