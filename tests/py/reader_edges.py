"""Targets for the reader's edge cases (tests/integration/reader.rs), with the READY / go
protocol of scenarios.py: the script prints `READY {json}` once its loop runs, waits for a line
on stdin, runs the scenario, prints one `BLOCK {json}` per blocking call with the duration
measured inside the target (and, through loopgap, a `GAP` line per long loop iteration, which
the tests use as the block's length), then exits.

Usage: python reader_edges.py deep DEPTH     a task recurses DEPTH frames deep, then blocks
                                             300 ms in time.sleep (twice)
       python reader_edges.py parked DEPTH   recurses DEPTH frames deep and prints READY from
                                             there, blocked until stdin closes (for attaching)
       python reader_edges.py names DIR      calls a function of DIR/odd_module.py (a directory
                                             whose name is not UTF-8) and one whose name has 5000
                                             characters; each blocks 150 ms
       python reader_edges.py tasks N        a task named "poller" and one left with its
                                             default name (coroutine `crunch`) each run N
                                             short CPU bursts of 12 ms (under the threshold),
                                             for the flame graph's `--by-task` grouping
"""
import asyncio
import json
import os
import sys
import threading
import time

import loopgap  # noqa: F401  (the loop times its own iterations: GAP lines)


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def report(name, t0):
    # `t0` pairs the block with the loop's own GAP around it (tests/py/loopgap.py): that whole
    # callback is what an episode measures, with any time the loop thread waited for a CPU
    # before `t0` or after this line.
    say("BLOCK", name=name, ms=(time.monotonic() - t0) * 1000.0, t0=t0,
        tid=threading.get_native_id())


def dive(n, then):
    """`n` more Python frames, then `then()` at the bottom."""
    if n <= 0:
        return then()
    return dive(n - 1, then)


def bottom():
    time.sleep(0.3)  # BLOCK-LINE deep


async def deep(depth):
    for _ in range(2):
        # Timed around the whole dive: going down and back up thousands of frames is part of
        # the callback's time.
        t0 = time.monotonic()
        dive(depth, bottom)
        report("deep", t0)
        await asyncio.sleep(0.2)


def load_names(directory):
    """The two odd functions, loaded before READY: writing and importing modules in a callback
    once took 96 ms (an `open` on a loaded machine), an episode the test did not expect."""
    sys.path.insert(0, directory)
    import odd_module  # noqa: E402  (lives in a directory whose name is not UTF-8)

    # A real module (code compiled from a "<...>" name is generated code, never the culprit
    # while a real file is on the stack).
    long_name = "f" * 5000
    with open(os.path.join(directory, "long_module.py"), "w") as f:
        f.write("import time\n\n\ndef %s(seconds):\n    time.sleep(seconds)\n" % long_name)
    import long_module  # noqa: E402

    return (("odd", odd_module.odd_block), ("long", getattr(long_module, long_name)))


async def names(calls):
    for name, call in calls:
        t0 = time.monotonic()
        call(0.15)
        report(name, t0)
        await asyncio.sleep(0.15)


def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def poll_work():
    spin(0.012)


def crunch_work():
    spin(0.012)


async def poller(n):
    for _ in range(n):
        poll_work()
        await asyncio.sleep(0.004)


async def crunch(n):
    for _ in range(n):
        crunch_work()
        await asyncio.sleep(0.004)


async def tasks(n):
    await asyncio.gather(asyncio.create_task(poller(n), name="poller"), crunch(n))


async def main(kind, arg):
    go = threading.Event()

    def read_go():
        sys.stdin.readline()
        go.set()

    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    calls = load_names(arg) if kind == "names" else None
    say("READY", tid=threading.get_native_id())
    while not go.is_set():
        await asyncio.sleep(0.01)
    if kind == "deep":
        await deep(int(arg))
    elif kind == "tasks":
        await tasks(int(arg))
    else:
        await names(calls)


def parked(depth):
    def wait():
        say("READY", tid=threading.get_native_id())
        sys.stdin.read()

    dive(depth, wait)


def run():
    kind, arg = sys.argv[1], sys.argv[2]
    depth = int(arg) if kind in ("deep", "parked") else 0
    sys.setrecursionlimit(depth + 1000)
    # Up to 3.10 every Python call also takes C stack: give the deep thread plenty.
    threading.stack_size(512 * 1024 * 1024)
    if kind == "parked":
        target = lambda: parked(depth)
    else:
        target = lambda: asyncio.run(main(kind, arg))
    t = threading.Thread(target=target, name="deep-loop")
    t.start()
    t.join()


if __name__ == "__main__":
    run()
