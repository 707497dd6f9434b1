"""Target for the kernel-clock tests and benchmarks. Same READY / go protocol as scenarios.py.

- `blocks N`: N blocking callbacks of 30-80 ms (a fixed pseudo-random sequence), each printed
  as `BLOCK {"start": s, "end": s, "ms": ms, ...}` with CLOCK_MONOTONIC times in seconds
  (`time.monotonic`), the clock of perf's timestamps.
- `gil`: a thread holds the GIL in pure Python for 0.3 s while the loop wants to run; prints
  `GIL {"start": s, "end": s}` around the hog.
- `spin SECONDS`: the loop runs `await asyncio.sleep(0)` as fast as it can and prints
  `SPIN {"iterations": n, "seconds": s}`: a loop doing tens of thousands of iterations a second.

Usage: python kernel_clock.py blocks|gil|spin [ARG]"""
import asyncio
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import native_id, read_go, say, wait_go  # noqa: E402


def reported(start, end):
    say("BLOCK", start=start, end=end, ms=(end - start) * 1000.0, tid=native_id(),
        thread=threading.current_thread().name)


async def blocks(n):
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    for _ in range(n):
        start = time.monotonic()
        time.sleep(rng.uniform(0.03, 0.08))
        # Printed by the next callback: the block's callback ends right after `end`.
        loop.call_soon(reported, start, time.monotonic())
        await asyncio.sleep(0.02)


def hog(seconds, marks):
    marks.append(time.monotonic())
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    marks.append(time.monotonic())


async def gil():
    marks = []
    t = threading.Thread(target=hog, args=(0.3, marks), name="hog")
    t.start()
    # The loop keeps waking up (a 1 ms timer) and so keeps needing the GIL.
    while t.is_alive():
        await asyncio.sleep(0.001)
    t.join()
    say("GIL", start=marks[0], end=marks[1], tid=native_id())


async def spin(seconds):
    n = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0)
        n += 1
    say("SPIN", iterations=n, seconds=time.monotonic() - t0)


async def main(mode, arg):
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    say("READY", tid=native_id())
    await wait_go()
    if mode == "blocks":
        await blocks(int(arg or 10))
    elif mode == "gil":
        await gil()
    elif mode == "spin":
        await spin(float(arg or 3))
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
