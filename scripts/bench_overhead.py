#!/usr/bin/env python3
"""Sampler cost: loopspy vs py-spy recording the same asyncio target, in one run.

For each target (tests/py/deep.py: a loop whose task runs 50 frames deep, "busy" alternating
40 ms blocks and 10 ms awaits, or "idle") and each rate, start a fresh target, record it for
--seconds with each tool, and print the tool's CPU use (user+sys of its process, % of one core)
and the rate it achieved. Then the cost of one full stack sample of the 50-frame stack:
loopspy with every tick a stack read (--stack-rate = --rate) vs py-spy, CPU per sample.

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


def start_target(python, mode):
    p = subprocess.Popen([python, TARGET, "1e9", mode], stdout=subprocess.PIPE, text=True)
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


def run_loopspy(pid, rate, seconds, tmp, extra=()):
    cpu, wall, out = measure([LOOPSPY, "record", "--pid", str(pid), "--rate", str(rate),
                              "--duration", str(seconds), "-o", os.path.join(tmp, "l.svg"), *extra])
    m = re.search(r"(\d+) samples in ([\d.]+) s", out)
    samples, elapsed = int(m.group(1)), float(m.group(2))
    return cpu, wall, samples / elapsed, samples


def run_pyspy(pid, rate, seconds, tmp):
    # py-spy's --duration collects rate*seconds samples however long that takes, so the rate
    # it achieved is samples over wall time.
    cpu, wall, out = measure(["py-spy", "record", "--pid", str(pid), "--rate", str(rate),
                              "--duration", str(seconds), "--nonblocking", "--idle",
                              "--format", "raw", "-o", os.path.join(tmp, "p.txt")])
    m = re.search(r"Samples: (\d+)", out)
    samples = int(m.group(1)) if m else 0
    return cpu, wall, samples / wall, samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    has_pyspy = shutil.which("py-spy") is not None
    if not has_pyspy:
        print("py-spy not found (python3 -m pip install py-spy): measuring loopspy only")
    print("target: %s (50-frame stack), %s; %d s per run; %d cores"
          % (os.path.basename(TARGET), args.python, args.seconds, os.cpu_count()))
    print("%-8s %-5s %8s %12s %14s %9s" % ("tool", "load", "rate Hz", "CPU % core", "achieved Hz", "samples"))
    stack_cost = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("idle", "busy"):
            for rate in [int(r) for r in args.rates.split(",")]:
                tools = [("loopspy", lambda pid: run_loopspy(pid, rate, args.seconds, tmp))]
                if has_pyspy:
                    tools.append(("py-spy", lambda pid: run_pyspy(pid, rate, args.seconds, tmp)))
                for name, fn in tools:
                    target = start_target(args.python, mode)
                    try:
                        cpu, wall, achieved, samples = fn(target.pid)
                    finally:
                        target.kill()
                        target.wait()
                    print("%-8s %-5s %8d %11.2f%% %14.0f %9d" % (name, mode, rate, 100 * cpu / wall, achieved, samples))
                    if name == "py-spy" and mode == "busy":
                        stack_cost["py-spy"] = 1e6 * cpu / max(samples, 1)
        # One full stack sample: loopspy reading a stack at every tick.
        target = start_target(args.python, "busy")
        try:
            cpu, wall, achieved, samples = run_loopspy(target.pid, 1000, args.seconds, tmp, ("--stack-rate", "1000"))
        finally:
            target.kill()
            target.wait()
        stack_cost["loopspy"] = 1e6 * cpu / max(samples, 1)
    print()
    print("cost of one full stack sample of the 50-frame stack (CPU per sample, busy target, 1 kHz):")
    for name, us in stack_cost.items():
        print("  %-8s %7.0f us" % (name, us))


if __name__ == "__main__":
    main()
