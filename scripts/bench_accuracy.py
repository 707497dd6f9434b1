#!/usr/bin/env python3
"""Episode duration accuracy: blocks of known length, timed inside the target
(tests/py/accuracy.py), against the episodes loopspy reports, for each clock (`--clock kernel`
at its default rate, `--clock probe` at each of --rates). Prints the median, 90th percentile
and worst absolute error.

    python3 scripts/bench_accuracy.py [--blocks 30] [--clocks kernel,probe] [--rates 1000,100]
        [--python python3]

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


def one_run(python, clock, rate, n, tmp):
    target = subprocess.Popen([python, TARGET, str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert target.stdout.readline().startswith("READY")
    episodes = os.path.join(tmp, "e.jsonl")
    rate_args = ["--rate", str(rate)] if rate else []
    spy = subprocess.Popen([LOOPSPY, "record", "--pid", str(target.pid), "--clock", clock,
                            *rate_args, "-o", os.path.join(tmp, "a.svg"),
                            "--episodes", episodes],
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
        print("  %s %s: %d episodes for %d blocks" % (clock, rate, len(eps), len(blocks)))
    # In order, each block with the next episode within 20 ms of it; a block without one is
    # missed (reported above), not paired with the wrong episode.
    errors, i = [], 0
    for b in blocks:
        j = i
        while j < len(eps) and abs(eps[j]["duration_ms"] - b["ms"]) > 20.0:
            j += 1
        if j < len(eps):
            errors.append(abs(eps[j]["duration_ms"] - b["ms"]))
            i = j + 1
    return errors


def p90(values):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--clocks", default="kernel,probe")
    ap.add_argument("--rates", default="1000,100", help="tick rates for the probe clock")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    print("%d blocks of 55-300 ms, %s" % (args.blocks, args.python))
    print("%-7s %8s %10s %10s %10s %10s" % ("clock", "rate Hz", "median ms", "p90 ms", "worst ms",
                                            "episodes"))
    runs = []
    for clock in args.clocks.split(","):
        if clock == "kernel":
            runs.append((clock, None))
        else:
            runs += [(clock, int(r)) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for clock, rate in runs:
            errors = one_run(args.python, clock, rate, args.blocks, tmp)
            print("%-7s %8s %10.2f %10.2f %10.2f %10d" % (
                clock, rate or "default", statistics.median(errors), p90(errors), max(errors),
                len(errors)), flush=True)


if __name__ == "__main__":
    main()
