#!/usr/bin/env python3
"""Episode duration accuracy: blocks of known length, timed inside the target
(tests/py/accuracy.py), against the episodes loopspy reports, for each clock (`--clock kernel`
at its default rate, `--clock probe` at each of --rates). Prints the median, 90th percentile
and worst absolute error, the median error bar (`duration_error_ms`), and how many blocks lie
within their episode's error bar (plus 0.5 ms for the target's own timing).

    python3 scripts/bench_accuracy.py [--blocks 30] [--clocks kernel,probe] [--rates 1000,100]
        [--python python3] [--load N]

`--load N` runs N busy Python processes meanwhile, so the sampler runs late (a loaded host).

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
    # Each block with the episode that overlaps it (a missed block shifts no pairing).
    rows = []
    for b in blocks:
        b_end = b["start"] + b["ms"] / 1000.0
        for e in eps:
            if e["start"] < b_end and e["start"] + e["duration_ms"] / 1000.0 > b["start"]:
                rows.append((abs(e["duration_ms"] - b["ms"]), e.get("duration_error_ms", 0.0)))
                break
    return rows


def p90(values):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--clocks", default="kernel,probe")
    ap.add_argument("--rates", default="1000,100", help="tick rates for the probe clock")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--load", type=int, default=0)
    args = ap.parse_args()
    print("%d blocks of 55-300 ms, %s, %d busy processes" % (args.blocks, args.python, args.load))
    print("%-7s %8s %10s %10s %10s %11s %7s %9s" % ("clock", "rate Hz", "median ms", "p90 ms",
                                                   "worst ms", "median bar", "in bar",
                                                   "episodes"))
    runs = []
    for clock in args.clocks.split(","):
        if clock == "kernel":
            runs.append((clock, None))
        else:
            runs += [(clock, int(r)) for r in args.rates.split(",")]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(args.load)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for clock, rate in runs:
                rows = one_run(args.python, clock, rate, args.blocks, tmp)
                errors = [e for e, _ in rows]
                inside = sum(1 for e, bar in rows if e <= bar + 0.5)
                print("%-7s %8s %10.2f %10.2f %10.2f %11.2f %6d%% %9d" % (
                    clock, rate or "default", statistics.median(errors), p90(errors),
                    max(errors), statistics.median(bar for _, bar in rows),
                    100 * inside // len(rows), len(rows)), flush=True)
    finally:
        for b in burners:
            b.kill()
            b.wait()


if __name__ == "__main__":
    main()
