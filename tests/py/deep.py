"""Benchmark target: an asyncio loop whose task runs 50 frames deep, alternating a 40 ms
blocking sleep and a 10 ms await ("busy"), or, with `idle`, a loop that only waits.
Runs forever (or for argv[1] seconds). Prints READY when running.

Usage: python deep.py [SECONDS] [busy|idle]"""
import asyncio
import sys
import time

DEPTH = 50


def deep(n):
    if n > 0:
        return deep(n - 1)
    time.sleep(0.04)


async def worker():
    while True:
        deep(DEPTH - 8)  # asyncio's own frames make up the rest of the 50
        await asyncio.sleep(0.01)


async def idle_worker():
    while True:
        await asyncio.sleep(0.1)


async def main(seconds, mode):
    task = asyncio.ensure_future(worker() if mode == "busy" else idle_worker())
    print("READY", flush=True)
    await asyncio.sleep(seconds)
    task.cancel()


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1e9
    asyncio.run(main(seconds, sys.argv[2] if len(sys.argv) > 2 else "busy"))
