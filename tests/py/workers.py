"""Worker processes for the --subprocesses test: a parent without an event loop runs asyncio
workers as multiprocessing processes, like a gunicorn/uvicorn master.

Protocol (stdin/stdout):
  READY {"workers": [A, B]}     workers A and B run their loops
  <- go                          A and B block twice each (BLOCK lines) and exit
  RESTARTED {"pid": C}           a new worker C replaces A, its loop runs
  <- go                          C blocks twice and exits; then the parent exits
"""
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time

import loopgap  # noqa: F401  (the loop times its own iterations: GAP lines)


def say(tag, **fields):
    # One write: worker processes share the pipe, and print() under PYTHONUNBUFFERED writes
    # the text and its newline separately, so two workers' lines could interleave.
    os.write(1, ("%s %s\n" % (tag, json.dumps(fields))).encode())


def worker(started, go):
    async def main():
        started.set()
        while not go.is_set():
            await asyncio.sleep(0.005)
        for _ in range(2):
            t0 = time.monotonic()
            time.sleep(0.12)  # BLOCK-LINE worker
            say("BLOCK", name="worker", ms=(time.monotonic() - t0) * 1000.0, t0=t0, tid=os.getpid(), pid=os.getpid())
            await asyncio.sleep(0.05)
    asyncio.run(main())


def start(ctx, go):
    started = ctx.Event()
    p = ctx.Process(target=worker, args=(started, go))
    p.start()
    started.wait()
    return p


def main():
    ctx = mp.get_context("fork")
    go1, go2 = ctx.Event(), ctx.Event()
    a, b = start(ctx, go1), start(ctx, go1)
    say("READY", workers=[a.pid, b.pid])
    sys.stdin.readline()
    go1.set()
    a.join()
    c = start(ctx, go2)
    say("RESTARTED", pid=c.pid)
    sys.stdin.readline()
    go2.set()
    for p in (b, c):
        p.join()


if __name__ == "__main__":
    main()
