"""Churn target for the src/remote live tests: while the main thread runs asyncio.run(...),
short-lived threads keep starting, running their own event loop for a moment, and exiting,
so the thread-state list and the running-loop slots change under the scanner's feet.

Prints `READY <main native id>` once the churn is under way; exits when stdin reaches EOF.
"""
import asyncio
import os
import sys
import threading


def short_lived(i):
    asyncio.run(asyncio.sleep(0.001 * (i % 5)))


churning = threading.Event()


def churn():
    i = 0
    while True:
        batch = [threading.Thread(target=short_lived, args=(i + k,)) for k in range(8)]
        for t in batch:
            t.start()
        churning.set()
        for t in batch:
            t.join()
        i += 8


def stdin_watcher():
    sys.stdin.read()
    os._exit(0)


async def amain():
    threading.Thread(target=stdin_watcher, daemon=True).start()
    threading.Thread(target=churn, daemon=True).start()
    while not churning.is_set():
        await asyncio.sleep(0)
    print("READY %d" % threading.get_native_id(), flush=True)
    while True:
        await asyncio.sleep(0.001)


asyncio.run(amain())
