#!/usr/bin/env python3
"""Target slowdown: pyperformance's async_tree benchmarks, alone and under loopspy on each clock.

The workload is pyperformance's own (`bm_async_tree/run_benchmark.py` from the `pyperformance`
package: asyncio.gather over a tree of 6 levels x 6 branches, 55987 tasks a run, leaves doing
nothing ("none"), sleeping 50 ms ("io"), ...). This script only drives it: with --target it
imports that file, runs one asyncio loop, prints READY, waits for "go" on stdin, then times
--runs runs of the variant back to back (time.perf_counter) and prints each.

Configurations, each a fresh target process:
- none:           no profiler
- loopspy kernel: loopspy record --pid P --clock kernel (defaults otherwise)
- loopspy probe:  loopspy record --pid P --clock probe (defaults: 1000 Hz ticks)

The target is pinned to CPU 0 and loopspy to CPU 1 (taskset-style affinity), so only loopspy's
direct effect on the target shows (perf tracepoints firing in the target's syscalls, memory and
/proc reads), not competition for a CPU. Rounds are interleaved (none, kernel, probe, none, ...)
so drift on the machine hits all alike. Per process the first run is a warm-up; the process's
score is the median of the rest. Per round, each profiled score is divided by the round's
"none" score; the table gives the mean of those ratios over the rounds with a 95% interval
(mean +- 2 standard errors), and the spread of each configuration's scores.

    python3 scripts/bench_throughput.py [--rounds 10] [--runs 6] [--variants none,io]

Needs a release build (cargo build --release) and pyperformance (python3 -m pip install
pyperformance).
"""
import argparse
import asyncio
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
CONFIGS = ["none", "loopspy kernel", "loopspy probe"]


def load_async_tree():
    try:
        import pyperformance
    except ImportError:
        sys.exit("pyperformance not found (python3 -m pip install pyperformance)")
    path = os.path.join(os.path.dirname(pyperformance.__file__), "data-files", "benchmarks",
                        "bm_async_tree", "run_benchmark.py")
    spec = importlib.util.spec_from_file_location("bm_async_tree", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def target(variant, runs):
    """The benchmark process: one loop, `runs` timed runs of the variant after "go"."""
    bm = load_async_tree()

    async def main():
        loop = asyncio.get_running_loop()
        print("READY", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        for _ in range(runs):
            tree = bm.BENCHMARKS[variant]()  # a fresh tree: no memo cache carried over
            t0 = time.perf_counter()
            await tree.run()
            print("TIME %.9f" % (time.perf_counter() - t0), flush=True)

    asyncio.run(main())


def pin(cpu):
    return lambda: os.sched_setaffinity(0, {cpu})


def one_process(config, variant, args, tmp):
    """The process's score (median run time after the warm-up run, seconds) and loopspy's
    summary (empty without loopspy)."""
    t = subprocess.Popen([args.python, os.path.abspath(__file__), "--target", variant,
                          "--runs", str(args.runs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=pin(0))
    assert t.stdout.readline().strip() == "READY"
    spy = None
    summary = ""
    try:
        if config != "none":
            clock = config.split()[1]
            spy = subprocess.Popen([LOOPSPY, "record", "--pid", str(t.pid), "--clock", clock,
                                    "-o", os.path.join(tmp, "t.svg")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=pin(1))
            for line in spy.stderr:
                summary += line
                if line.startswith("loopspy: sampling process"):
                    break
            else:
                sys.exit("loopspy did not start:\n" + summary)
        t.stdin.write("go\n")
        t.stdin.flush()
        times = [float(l.split()[1]) for l in t.stdout if l.startswith("TIME")]
        t.wait()
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            summary += spy.communicate(timeout=60)[1]
    if len(times) != args.runs:
        sys.exit("the benchmark did not finish: %r" % times)
    return statistics.median(times[1:]), summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=6, help="timed runs per process (first: warm-up)")
    ap.add_argument("--variants", default="none,io")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.target:
        target(args.target, args.runs)
        return
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    if os.cpu_count() < 2:
        sys.exit("needs 2 CPUs: the target on one, loopspy on the other")
    load_async_tree()
    print("pyperformance async_tree, %s; %d rounds x %d runs per process (first run is warm-up); "
          "target on CPU 0, loopspy on CPU 1" % (args.python, args.rounds, args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            scores = {c: [] for c in CONFIGS}
            notes = set()
            for r in range(args.rounds):
                for c in CONFIGS:
                    score, summary = one_process(c, variant, args, tmp)
                    scores[c].append(score)
                    for line in summary.splitlines():
                        if line.startswith("loopspy: clock:") or line.startswith("loopspy: note:"):
                            notes.add("%s: %s" % (c, line))
                    print("  %s round %d %-15s %8.2f ms" % (variant, r + 1, c, score * 1000),
                          flush=True)
            print()
            print("async_tree_%s:" % variant)
            print("| configuration | median run | spread (min-max) | vs none, mean of rounds "
                  "| 95% interval |")
            print("|---|---|---|---|---|")
            base = scores["none"]
            for c in CONFIGS:
                v = scores[c]
                ratios = [(x / b - 1) * 100 for x, b in zip(v, base)]
                mean = statistics.mean(ratios)
                half = 2 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0
                print("| %s | %.2f ms | %.2f-%.2f ms | %+.2f %% | %+.2f %% to %+.2f %% |" % (
                    c, statistics.median(v) * 1000, min(v) * 1000, max(v) * 1000,
                    mean, mean - half, mean + half))
            for n in sorted(notes):
                print("  " + n)
            print(flush=True)


if __name__ == "__main__":
    main()
