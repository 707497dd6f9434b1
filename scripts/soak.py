#!/usr/bin/env python3
"""Soak: does loopspy's memory stay flat over a long recording of a churning target?

Starts tests/py/churn.py (threads, tasks and event loops created and destroyed continuously,
blocking callbacks now and then, multiprocessing workers restarted) and records it with two
loopspy runs at the same time, both at the default rate, for --minutes:

- raw:  loopspy record --pid P --format raw -o DIR/soak-raw.jsonl
- svg:  loopspy record --pid P -o DIR/soak.svg --episodes DIR/soak-episodes.jsonl

Every --interval seconds it prints each loopspy process's RSS (VmRSS from /proc/PID/status),
the target's RSS and the outputs' sizes. At the end: each run's sample error share and episodes
found, the RSS growth per hour (least-squares slope after the first --warmup minutes), and the
episodes found by replaying the raw recording (`loopspy report`).

    python3 scripts/soak.py [--minutes 30] [--interval 30] [--dir /tmp/loopspy-soak]

Needs a release build (cargo build --release). The binary is copied first, so rebuilding
during a soak does not disturb it.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

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


def size_mb(path):
    """Size of an output, or of its temporary file while loopspy is still writing it."""
    d, name = os.path.split(path)
    for candidate in [path] + [os.path.join(d, f) for f in os.listdir(d or ".")
                               if f.startswith("." + name + ".") and f.endswith(".tmp")]:
        try:
            return os.path.getsize(candidate) / 1e6
        except OSError:
            pass
    return 0.0


def line_count(path):
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def slope_mb_per_hour(points):
    """Least-squares slope of (seconds, kB) points, in MB per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return float("nan")
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 3600 / 1024


def summary_figures(stderr):
    """(samples, errors, error %, episodes) from loopspy's summary on stderr."""
    m = re.search(r"(\d+) samples in [\d.]+ s.*?, (\d+) errors?", stderr)
    samples, errors = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    # From the counts: loopspy rounds its percentage to 0.1 %.
    share = 100.0 * errors / samples if samples else float("nan")
    e = re.search(r"(\d+) blocking episodes?", stderr)
    episodes = int(e.group(1)) if e else (0 if "no blocking episodes" in stderr else None)
    return samples, errors, share, episodes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between RSS lines")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="minutes left out of the growth slope")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--dir", default=None, help="where the outputs go (default: a new /tmp dir)")
    ap.add_argument("--workers", type=int, default=2, help="multiprocessing workers in the target")
    ap.add_argument("--restart", type=float, default=20.0,
                    help="seconds between worker restarts in the target")
    ap.add_argument("--loopspy-args", default="",
                    help="extra arguments for both loopspy runs, e.g. '--subprocesses'")
    ap.add_argument("--no-report", action="store_true",
                    help="skip replaying the raw recording at the end")
    args = ap.parse_args()
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    out = args.dir or tempfile.mkdtemp(prefix="loopspy-soak-")
    os.makedirs(out, exist_ok=True)
    binary = os.path.join(out, "loopspy")
    shutil.copy2(LOOPSPY, binary)
    seconds = args.minutes * 60.0
    extra = args.loopspy_args.split()

    target = subprocess.Popen(
        [args.python, CHURN, "--seconds", str(seconds + 60), "--workers", str(args.workers),
         "--restart", str(args.restart)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = target.stdout.readline()
    if not ready.startswith("READY"):
        sys.exit("churn target did not start: %r" % ready)
    pid = json.loads(ready.split(None, 1)[1])["pid"]

    raw = os.path.join(out, "soak-raw.jsonl")
    svg = os.path.join(out, "soak.svg")
    episodes = os.path.join(out, "soak-episodes.jsonl")
    runs = {
        "raw": [binary, "record", "--pid", str(pid), "--duration", str(seconds),
                "--format", "raw", "-o", raw, *extra],
        "svg": [binary, "record", "--pid", str(pid), "--duration", str(seconds),
                "-o", svg, "--episodes", episodes, *extra],
    }
    logs = {name: open(os.path.join(out, "loopspy-%s.stderr" % name), "w+") for name in runs}
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[name])
             for name, cmd in runs.items()}
    print("soak: %.0f min, target pid %d (%s), outputs in %s" % (args.minutes, pid, args.python, out))
    for name, cmd in runs.items():
        print("  %s: %s" % (name, " ".join(cmd)))
    print("%8s %12s %12s %12s %12s %14s" % ("elapsed", "raw RSS MB", "svg RSS MB", "target MB",
                                            "raw file MB", "episodes so far"))
    sys.stdout.flush()

    t0 = time.monotonic()
    points = {name: [] for name in runs}
    next_tick = 0.0
    while any(p.poll() is None for p in procs.values()):
        now = time.monotonic() - t0
        if now >= next_tick:
            rss = {name: rss_kb(p.pid) for name, p in procs.items()}
            for name, kb in rss.items():
                if kb is not None:
                    points[name].append((now, kb))
            target_kb = rss_kb(pid)
            fmt = lambda kb: "%12.1f" % (kb / 1024) if kb is not None else "%12s" % "-"
            print("%7.0fs %s %s %s %12.1f %14d" % (now, fmt(rss["raw"]), fmt(rss["svg"]),
                                                  fmt(target_kb), size_mb(raw),
                                                  line_count(episodes)))
            sys.stdout.flush()
            next_tick += args.interval
        time.sleep(min(1.0, max(0.05, next_tick - (time.monotonic() - t0))))

    target.stdin.close()
    churn_stats = {}
    for line in target.stdout:
        if line.startswith("STATS"):
            churn_stats = json.loads(line.split(None, 1)[1])
    target.wait(timeout=60)

    print()
    print("target churned: %s" % json.dumps(churn_stats))
    print("%-4s %6s %10s %8s %9s %9s %12s %12s %14s" % (
        "run", "exit", "samples", "errors", "error %", "episodes", "RSS 1st MB", "RSS last MB",
        "growth MB/h"))
    for name, p in procs.items():
        logs[name].seek(0)
        stderr = logs[name].read()
        samples, errors, share, eps = summary_figures(stderr)
        pts = points[name]
        steady = [pt for pt in pts if pt[0] >= args.warmup * 60] or pts
        print("%-4s %6d %10d %8d %9.4f %9s %12.1f %12.1f %14.2f" % (
            name, p.returncode, samples, errors, share, eps,
            pts[0][1] / 1024 if pts else float("nan"),
            pts[-1][1] / 1024 if pts else float("nan"),
            slope_mb_per_hour(steady)))
        if p.returncode != 0:
            print("  %s failed:\n%s" % (name, stderr[-2000:]))
    print("episodes log: %d lines in %s" % (line_count(episodes), episodes))
    print("raw recording: %.1f MB in %s" % (size_mb(raw), raw))
    if not args.no_report and os.path.exists(raw):
        replayed = os.path.join(out, "soak-replayed-episodes.jsonl")
        t = time.monotonic()
        rep = subprocess.run([binary, "report", raw, "-o", os.path.join(out, "soak-replayed.svg"),
                              "--episodes", replayed], capture_output=True, text=True)
        print("report of the raw recording: exit %d, %d episodes, %.0f s" % (
            rep.returncode, line_count(replayed), time.monotonic() - t))
        if rep.returncode != 0:
            print(rep.stderr[-2000:])


if __name__ == "__main__":
    main()
