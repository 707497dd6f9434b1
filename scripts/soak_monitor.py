#!/usr/bin/env python3
"""Soak for `loopspy monitor`: does its memory stay flat while episodes keep coming?

Starts tests/py/churn.py (tasks, threads, short-lived loop threads and multiprocessing workers
created and destroyed continuously, blocking callbacks now and then, the oldest worker
replaced every --restart seconds) and runs `loopspy monitor --pid P --subprocesses` on it at
the default rate for --minutes, with `--episodes` appended to a file. Every --interval seconds
it scrapes /metrics and fetches /debug/pprof/profile?seconds=30 (as Prometheus and Parca
would), and prints loopspy's RSS (VmRSS), the episodes counted so far, the number of series
in /metrics and the profile's size. At the end: the RSS growth per hour (least-squares slope
after the first --warmup minutes), first and last RSS, and the episodes logged.

    python3 scripts/soak_monitor.py [--minutes 30] [--interval 30] [--dir /tmp/loopspy-soak-monitor]

Needs a release build (cargo build --release). The binary is copied first, so rebuilding
during a soak does not disturb it.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
CHURN = os.path.join(ROOT, "tests", "py", "churn.py")


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def slope_per_hour(points):
    """Least-squares slope of (seconds, value) points, per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx * 3600.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes left out of the slope")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="loopspy-soak-monitor-")
    os.makedirs(work, exist_ok=True)
    binary = os.path.join(work, "loopspy")
    shutil.copy2(LOOPSPY, binary)
    seconds = args.minutes * 60.0
    target = subprocess.Popen(
        [args.python, CHURN, "--seconds", str(seconds + 120)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in target.stdout:
        if line.startswith("READY"):
            break
    episodes = os.path.join(work, "episodes.jsonl")
    err = open(os.path.join(work, "monitor.err"), "w+")
    monitor = subprocess.Popen(
        [binary, "monitor", "--pid", str(target.pid), "--subprocesses",
         "--listen", "127.0.0.1:0", "--episodes", episodes],
        stderr=err, stdout=subprocess.DEVNULL)
    addr = None
    deadline = time.monotonic() + 60
    while addr is None and time.monotonic() < deadline:
        time.sleep(0.2)
        err.seek(0)
        m = re.search(r"serving http://([0-9.:]+)/metrics", err.read())
        addr = m.group(1) if m else None
    if addr is None:
        sys.exit("loopspy monitor did not start serving; see %s" % err.name)
    print("soak: monitor pid %d on %s, target pid %d, for %.0f min; files in %s"
          % (monitor.pid, addr, target.pid, args.minutes, work), flush=True)
    print("%8s %10s %10s %8s %10s" % ("minute", "rss_kb", "episodes", "series", "pprof_kb"))
    start = time.monotonic()
    points = []
    first = last = None
    try:
        while time.monotonic() - start < seconds:
            time.sleep(min(args.interval, max(0.0, seconds - (time.monotonic() - start))))
            if monitor.poll() is not None:
                sys.exit("loopspy monitor exited early (%s); see %s" % (monitor.returncode, err.name))
            text = get("http://%s/metrics" % addr).decode()
            profile = get("http://%s/debug/pprof/profile?seconds=30" % addr)
            count = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                        if l.startswith("loopspy_blocking_episodes_total{"))
            series = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
            rss = rss_kb(monitor.pid)
            t = time.monotonic() - start
            print("%8.1f %10d %10d %8d %10.1f" % (t / 60, rss, count, series, len(profile) / 1024),
                  flush=True)
            first = first if first is not None else rss
            last = rss
            if t >= args.warmup * 60:
                points.append((t, rss))
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
        target.stdin.close()
        try:
            target.wait(timeout=30)
        except subprocess.TimeoutExpired:
            target.kill()
    logged = sum(1 for _ in open(episodes)) if os.path.exists(episodes) else 0
    print("soak: RSS %s kB first, %s kB last, growth %+.0f kB/hour after the first %.0f min; "
          "%d episodes logged" % (first, last, slope_per_hour(points), args.warmup, logged))


if __name__ == "__main__":
    main()
