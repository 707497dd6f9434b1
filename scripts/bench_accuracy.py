#!/usr/bin/env python3
"""Episode duration accuracy: blocks of known length, timed inside the target
(tests/py/accuracy.py), against the episodes loopspy reports, at each rate. Prints the median
and worst absolute error.

    python3 scripts/bench_accuracy.py [--blocks 30] [--rates 1000,100] [--python python3]

Needs a release build (cargo build --release).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
TARGET = os.path.join(ROOT, "tests", "py", "accuracy.py")


def one_run(python, rate, n, tmp):
    target = subprocess.Popen([python, TARGET, str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().startswith("READY")
    episodes = os.path.join(tmp, "e.jsonl")
    spy = subprocess.Popen([LOOPSPY, "record", "--pid", str(target.pid), "--rate", str(rate),
                            "-o", os.path.join(tmp, "a.svg"), "--episodes", episodes],
                           stderr=subprocess.PIPE, text=True)
    for line in spy.stderr:  # loopspy's own READY: its first sample is in
        if line.startswith("loopspy: sampling process"):
            break
    target.stdin.write("go\n")
    target.stdin.flush()
    blocks = [json.loads(l.split(" ", 1)[1]) for l in target.stdout if l.startswith("BLOCK")]
    target.wait()
    spy.stderr.read()
    spy.wait()
    with open(episodes) as f:
        eps = [json.loads(l) for l in f]
    if len(eps) != len(blocks):
        print("  rate %d: %d episodes for %d blocks" % (rate, len(eps), len(blocks)))
    return [abs(e["duration_ms"] - b["ms"]) for e, b in zip(eps, blocks)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--rates", default="1000,100")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    print("%d blocks of 55-300 ms, %s" % (args.blocks, args.python))
    print("%8s %12s %12s %10s" % ("rate Hz", "median ms", "worst ms", "episodes"))
    with tempfile.TemporaryDirectory() as tmp:
        for rate in [int(r) for r in args.rates.split(",")]:
            errors = one_run(args.python, rate, args.blocks, tmp)
            print("%8d %12.2f %12.2f %10d" % (rate, statistics.median(errors), max(errors), len(errors)))


if __name__ == "__main__":
    main()
