#!/usr/bin/env python3
"""Sampler cost: loopspy vs py-spy recording the same 50-frame-deep asyncio target.

For each rate (loopspy's default and 1 kHz) and each tool, start a fresh target
(tests/py/deep.py), record it for --seconds, and print the tool's CPU use (user+sys of the
tool's process, as a share of one core) and the sampling rate it achieved.

    python3 scripts/bench_overhead.py [--seconds 10] [--rates 100,1000]

Needs a release build (cargo build --release) and py-spy (python3 -m pip install py-spy).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
TARGET = os.path.join(ROOT, "tests", "py", "deep.py")


def start_target(python):
    p = subprocess.Popen([python, TARGET], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    return p


def measure(cmd):
    """Run cmd to completion; return (cpu seconds, wall seconds, stderr+stdout text)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if status != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), out))
    return ru.ru_utime + ru.ru_stime, wall, out


def run_loopspy(pid, rate, seconds, tmp):
    cpu, wall, out = measure([LOOPSPY, "record", "--pid", str(pid), "--rate", str(rate),
                              "--duration", str(seconds), "-o", os.path.join(tmp, "l.svg")])
    m = re.search(r"(\d+) samples in ([\d.]+) s", out)
    samples, elapsed = int(m.group(1)), float(m.group(2))
    return cpu / wall, samples / elapsed, samples


def run_pyspy(pid, rate, seconds, tmp):
    # py-spy's --duration collects rate*seconds samples however long that takes, so the rate
    # it achieved is samples over wall time.
    cpu, wall, out = measure(["py-spy", "record", "--pid", str(pid), "--rate", str(rate),
                              "--duration", str(seconds), "--nonblocking", "--idle",
                              "--format", "raw", "-o", os.path.join(tmp, "p.txt")])
    m = re.search(r"Samples: (\d+)", out)
    samples = int(m.group(1)) if m else 0
    return cpu / wall, samples / wall, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    tools = [("loopspy", run_loopspy)]
    if shutil.which("py-spy"):
        tools.append(("py-spy", run_pyspy))
    else:
        print("py-spy not found (python3 -m pip install py-spy): measuring loopspy only")
    print("target: %s, 50-frame stack, %s; %d s per run; %d cores"
          % (os.path.basename(TARGET), args.python, args.seconds, os.cpu_count()))
    print("%-8s %8s %12s %14s %9s" % ("tool", "rate Hz", "CPU % core", "achieved Hz", "samples"))
    with tempfile.TemporaryDirectory() as tmp:
        for rate in [int(r) for r in args.rates.split(",")]:
            for name, fn in tools:
                target = start_target(args.python)
                try:
                    cpu, achieved, samples = fn(target.pid, rate, args.seconds, tmp)
                finally:
                    target.kill()
                    target.wait()
                print("%-8s %8d %11.1f%% %14.0f %9d" % (name, rate, cpu * 100, achieved, samples))


if __name__ == "__main__":
    main()
