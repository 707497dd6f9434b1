#!/usr/bin/env python3
"""Stack-read cost and busy-process accuracy: loopspy vs py-spy vs CPython's own unwinder.

In one run, with repeats interleaved (each round runs every measurement once, in turn) and the
spread printed (median, min-max over the rounds):

1. CPU per full stack on tests/py/deep.py (a task 50 frames deep), CPython 3.14:
   - loopspy, stacks alone: `loopspy bench-stacks` reads every thread's stack in a tight loop
     (as the unwinder below is timed);
   - loopspy, whole samples: `loopspy bench-stacks --mode sample` (stack, OS state, ready queue,
     current task and timers of each thread: what a stack sample of `record` costs);
   - loopspy record --stack-rate 1000: the recording's CPU divided by its stack samples;
   - py-spy record --rate 1000 --nonblocking: its CPU divided by its samples;
   - CPython's `_remote_debugging.RemoteUnwinder(pid).get_stack_trace()`, in a tight loop run
     by the same interpreter (it only reads its own minor version).
2. The 150-thread case of issue 9: a loop blocking 10 x 100 ms in time.sleep while 150 other
   threads wait; `loopspy record` at default settings. Prints the episodes' error against the
   target's own clock, the late ticks and loopspy's CPU (% of one core).
3. loopspy's CPU at default settings (1 kHz ticks, 10 Hz stacks) on deep.py busy and idle.

    python3 scripts/bench_stacks.py [--rounds 3] [--seconds 5] [--python PYTHON3.14] [--clock probe]

`--clock` is passed to every `loopspy record` (default `auto`: the kernel clock where perf events
are allowed); `probe` gives the 1 kHz ticks issue 9 measured.

Needs a release build (cargo build --release), py-spy (python3 -m pip install py-spy) and a
CPython 3.14 (../shared/tools/get-python 3.14; the default is /opt/loopspy-pythons/3.14).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
DEEP = os.path.join(ROOT, "tests", "py", "deep.py")
DEFAULT_PY = "/opt/loopspy-pythons/3.14/usr/bin/python3.14"
CLOCK = ["--clock", "auto"]

THREADS_150 = r'''
import asyncio, json, sys, threading, time
ev = threading.Event()
for i in range(150):
    threading.Thread(target=ev.wait, name=f"pool-{i}", daemon=True).start()
async def blocker():
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _ in range(10):
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        time.sleep(0.1)
        print("BLOCK", json.dumps({"ms": (time.monotonic() - t0) * 1000}), flush=True)
asyncio.run(blocker())
'''


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, **kw)
    line = p.stdout.readline().strip()
    assert line.startswith("READY"), line
    return p


def measure(cmd):
    """Run cmd to completion; return (cpu seconds, wall seconds, output)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), out))
    return ru.ru_utime + ru.ru_stime, time.monotonic() - t0, out


def loopspy_bench(pid, mode, reads):
    _, _, out = measure([LOOPSPY, "bench-stacks", "--pid", str(pid), "--mode", mode,
                         "--reads", str(reads)])
    m = re.search(r"cpu_us_per_read ([\d.]+) .* frames ([\d.]+)", out)
    return float(m.group(1)), float(m.group(2))


def loopspy_record(pid, seconds, tmp, extra=()):
    cpu, wall, out = measure([LOOPSPY, "record", "--pid", str(pid), "--duration", str(seconds),
                              "-o", os.path.join(tmp, "l.svg"), *CLOCK, *extra])
    m = re.search(r"(\d+) samples in ([\d.]+) s .*?(?:; (\d+) with full stacks)?\)", out)
    samples, elapsed = int(m.group(1)), float(m.group(2))
    stacks = int(m.group(3) or samples)
    return cpu, elapsed, stacks


def pyspy_record(pid, seconds, tmp):
    cpu, wall, out = measure(["py-spy", "record", "--pid", str(pid), "--rate", "1000",
                              "--duration", str(seconds), "--nonblocking", "--idle",
                              "--format", "raw", "-o", os.path.join(tmp, "p.txt")])
    m = re.search(r"Samples: (\d+)", out)
    return cpu, int(m.group(1)) if m else 0


def unwinder(python, pid, reads):
    # A read torn by the running target raises; it is counted and timed like the others.
    code = ("import _remote_debugging, time\n"
            "u = _remote_debugging.RemoteUnwinder(%d)\n"
            "failed = 0\n"
            "t = time.process_time()\n"
            "for _ in range(%d):\n"
            "    try:\n"
            "        s = u.get_stack_trace()\n"
            "    except Exception:\n"
            "        failed += 1\n"
            "print((time.process_time() - t) / %d * 1e6, failed)\n" % (pid, reads, reads))
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    us, failed = out.stdout.split()
    if int(failed):
        print("  (RemoteUnwinder: %s of %d calls raised)" % (failed, reads), flush=True)
    return float(us)


def threads_150(python, tmp):
    """(errors in ms of each episode vs the block, late ticks, loopspy CPU % of a core)."""
    target = start([python, "-c", THREADS_150])
    episodes = os.path.join(tmp, "e.jsonl")
    spy = subprocess.Popen([LOOPSPY, "record", "--pid", str(target.pid), "-o",
                            os.path.join(tmp, "t.svg"), "--episodes", episodes, *CLOCK],
                           stderr=subprocess.PIPE, text=True)
    err = ""
    while "sampling process" not in err:
        line = spy.stderr.readline()
        if not line:
            sys.exit("loopspy did not start")
        err += line
    target.stdin.write("go\n")
    target.stdin.flush()
    blocks = [json.loads(l.split(" ", 1)[1])["ms"] for l in target.stdout if l.startswith("BLOCK")]
    target.wait()
    err += spy.stderr.read()
    _, status, ru = os.wait4(spy.pid, 0)
    eps = [json.loads(l)["duration_ms"] for l in open(episodes)]
    m = re.search(r"samples in ([\d.]+) s", err)
    late = re.search(r"(\d+) late ticks?", err)
    cpu = (ru.ru_utime + ru.ru_stime) / float(m.group(1)) * 100
    errors = [e - b for e, b in zip(eps, blocks)] if len(eps) == len(blocks) else None
    return errors, len(eps), len(blocks), int(late.group(1)) if late else 0, cpu


def spread(values, fmt="%.1f"):
    if not values:
        return "-"
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(values), min(values), max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--python", default=DEFAULT_PY)
    ap.add_argument("--clock", default="auto", choices=["auto", "kernel", "probe"])
    args = ap.parse_args()
    CLOCK[1] = args.clock
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    if not os.path.exists(args.python):
        sys.exit("no CPython 3.14 at %s (../shared/tools/get-python 3.14, or --python)" % args.python)
    has_pyspy = shutil.which("py-spy") is not None
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True).stdout.strip()
    print("CPython %s (%s); deep.py 50 frames; %d rounds, %d s per recording; --clock %s; %d cores"
          % (version, args.python, args.rounds, args.seconds, args.clock, os.cpu_count()))
    r = {k: [] for k in ("stacks", "sample", "record", "pyspy", "unwinder", "default_busy",
                         "default_idle", "err150", "late150", "cpu150")}
    frames = None
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            busy = start([args.python, DEEP, "1e9", "busy"])
            try:
                us, frames = loopspy_bench(busy.pid, "stacks", args.reads)
                r["stacks"].append(us)
                r["unwinder"].append(unwinder(args.python, busy.pid, args.reads))
                r["sample"].append(loopspy_bench(busy.pid, "sample", args.reads)[0])
                cpu, _, stacks = loopspy_record(busy.pid, args.seconds, tmp,
                                                ["--rate", "1000", "--stack-rate", "1000"])
                r["record"].append(cpu / max(stacks, 1) * 1e6)
                if has_pyspy:
                    cpu, samples = pyspy_record(busy.pid, args.seconds, tmp)
                    r["pyspy"].append(cpu / max(samples, 1) * 1e6)
                cpu, elapsed, _ = loopspy_record(busy.pid, args.seconds, tmp)
                r["default_busy"].append(cpu / elapsed * 100)
            finally:
                busy.kill()
                busy.wait()
            idle = start([args.python, DEEP, "1e9", "idle"])
            try:
                cpu, elapsed, _ = loopspy_record(idle.pid, args.seconds, tmp)
                r["default_idle"].append(cpu / elapsed * 100)
            finally:
                idle.kill()
                idle.wait()
            errors, n_eps, n_blocks, late, cpu = threads_150(args.python, tmp)
            if errors is None:
                print("round %d: 150 threads: %d episodes for %d blocks" % (rnd + 1, n_eps, n_blocks))
            else:
                r["err150"].extend(errors)
            r["late150"].append(late)
            r["cpu150"].append(cpu)
            print("round %d done" % (rnd + 1), flush=True)
    print()
    print("CPU per full stack (µs), median (min-max) over %d rounds; %.1f frames a read on average"
          % (args.rounds, frames))
    print("  %-52s %s" % ("loopspy, stacks alone (bench-stacks)", spread(r["stacks"])))
    print("  %-52s %s" % ("loopspy, whole samples (bench-stacks --mode sample)", spread(r["sample"])))
    print("  %-52s %s" % ("loopspy record --stack-rate 1000, per stack", spread(r["record"])))
    print("  %-52s %s" % ("py-spy record --rate 1000 --nonblocking, per sample",
                          spread(r["pyspy"]) if has_pyspy else "py-spy not installed"))
    print("  %-52s %s" % ("RemoteUnwinder.get_stack_trace(), per call", spread(r["unwinder"])))
    print()
    errs = [abs(e) for e in r["err150"]]
    print("150 idle threads, 10 x 100 ms blocks per round (loopspy record, defaults):")
    print("  episode - block (ms): %s; worst |error| %.1f ms"
          % (spread(r["err150"]), max(errs) if errs else float("nan")))
    print("  late ticks per run: %s; loopspy CPU %% of a core: %s"
          % (spread(r["late150"], "%d"), spread(r["cpu150"])))
    print()
    print("loopspy CPU %% of a core at default settings: busy %s, idle %s"
          % (spread(r["default_busy"]), spread(r["default_idle"])))


if __name__ == "__main__":
    main()
