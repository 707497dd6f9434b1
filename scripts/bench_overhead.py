#!/usr/bin/env python3
"""Sampler cost: loopspy at its defaults, on each clock, beside py-spy at 100 Hz and 1 kHz,
recording the same asyncio target, in one run.

For each target (tests/py/deep.py: a loop whose task runs 50 frames deep, "busy" alternating
40 ms blocks and 10 ms awaits, or "idle") and each tool, start a fresh target, attach the tool,
let it warm up for a second after it says it samples (attaching reads the binary's symbols
once), then measure its CPU time over --seconds: the sum of its threads' run time from
/proc/PID/task/*/schedstat (nanoseconds), as a % of one core. --repeats runs of each, interleaved;
the table gives the median and the range. Then the cost of one full stack sample of the 50-frame
stack: loopspy with every tick a stack read (--stack-rate = --rate, probe clock) vs py-spy.

    python3 scripts/bench_overhead.py [--seconds 10] [--repeats 3] [--rates 100,1000]
        [--baseline OTHER/target/release/loopspy]

--baseline measures another loopspy build (an earlier commit's) beside this one, interleaved.

Needs a release build (cargo build --release) and py-spy (python3 -m pip install py-spy).
"""
import argparse
import os
import shutil
import signal
import statistics
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


def cpu_ns(pid):
    """Run time of all of a process's threads so far, in ns."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def measure(cmd, ready, stream, seconds):
    """Start cmd, wait for `ready` on its `stream` (stdout or stderr), warm up a second, then
    return its CPU use over `seconds` (% of one core) and its output after SIGINT."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if ready in line:
            break
    else:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), "".join(seen)))
    time.sleep(1.0)
    c0, t0 = cpu_ns(p.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_ns(p.pid), time.monotonic()
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=60)[0]
    return 100.0 * (c1 - c0) / 1e9 / (t1 - t0), "".join(seen) + out


def tools(args, tmp):
    """(name, label, command maker) for each configuration."""
    out = [
        ("loopspy", "kernel clock, defaults",
         lambda pid: [LOOPSPY, "record", "--pid", str(pid), "--clock", "kernel",
                      "-o", os.path.join(tmp, "k.svg")]),
        ("loopspy", "probe clock, defaults",
         lambda pid: [LOOPSPY, "record", "--pid", str(pid), "--clock", "probe",
                      "-o", os.path.join(tmp, "p.svg")]),
    ]
    if args.baseline:
        # The same two configurations on another build (an earlier commit, say), interleaved.
        out += [("loopspy (baseline)", label, lambda pid, make=make: [args.baseline] + make(pid)[1:])
                for _, label, make in list(out)]
    if shutil.which("py-spy"):
        for rate in filter(None, args.rates.split(",")):
            out.append(("py-spy", "%s Hz" % rate,
                        lambda pid, rate=rate: ["py-spy", "record", "--pid", str(pid), "--rate",
                                                rate, "--nonblocking", "--idle", "--format",
                                                "raw", "-o", os.path.join(tmp, "s.txt")]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rates", default="100,1000", help="py-spy's rates (empty: no py-spy)")
    ap.add_argument("--baseline", help="another loopspy binary to measure beside this one")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    if not shutil.which("py-spy"):
        print("py-spy not found (python3 -m pip install py-spy): measuring loopspy only")
    print("target: %s (50-frame stack), %s; %.0f s measured per run after 1 s of warm-up, "
          "%d runs each, interleaved; %d cores"
          % (os.path.basename(TARGET), args.python, args.seconds, args.repeats, os.cpu_count()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = tools(args, tmp)
        for i in range(args.repeats):
            for mode in ("idle", "busy"):
                for name, label, make in configs:
                    target = start_target(args.python, mode)
                    ready = ("loopspy: sampling process" if name.startswith("loopspy")
                             else "Sampling process")
                    try:
                        cpu, out = measure(make(target.pid), ready, "stdout", args.seconds)
                    finally:
                        target.kill()
                        target.wait()
                    if name.startswith("loopspy") and "clock: kernel" not in out and "kernel" in label:
                        sys.exit("the kernel clock was not used:\n" + out)
                    results.setdefault((mode, name, label), []).append(cpu)
                    print("  run %d %-5s %-8s %-24s %6.2f %%" % (i + 1, mode, name, label, cpu),
                          flush=True)
        # One full stack sample: loopspy reading a stack at every tick.
        target = start_target(args.python, "busy")
        try:
            cpu, out = measure([LOOPSPY, "record", "--pid", str(target.pid), "--clock", "probe",
                                "--rate", "1000", "--stack-rate", "1000",
                                "-o", os.path.join(tmp, "x.svg")],
                               "loopspy: sampling process", "stdout", args.seconds)
        finally:
            target.kill()
            target.wait()
    print()
    print("| target | tool | settings | CPU (% of one core), median | range |")
    print("|---|---|---|---|---|")
    for (mode, name, label), v in results.items():
        print("| %s loop | %s | %s | %.2f %% | %.2f-%.2f %% |"
              % (mode, name, label, statistics.median(v), min(v), max(v)))
    print()
    print("loopspy reading a full 50-frame stack 1000 times a second: %.1f %% of a core, "
          "about %.0f us per stack" % (cpu, cpu * 10))


if __name__ == "__main__":
    main()
