"""Duration-accuracy target: blocks its loop for known lengths (55-300 ms, from a fixed
pseudo-random sequence), each measured inside the target and printed as `BLOCK {json}`.
Same READY / go protocol as scenarios.py.

Usage: python accuracy.py [N]"""
import asyncio
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scenarios import native_id, read_go, say, wait_go  # noqa: E402


def reported(t0, t1, wall1):
    # `start`: the block's start on the wall clock (Unix seconds), like an episode's.
    say("BLOCK", name="block", ms=(t1 - t0) * 1000.0, tid=native_id(),
        thread=threading.current_thread().name, start=wall1 - (t1 - t0))


async def blocks(n):
    loop = asyncio.get_running_loop()
    rng = random.Random(42)
    for _ in range(n):
        t0 = time.monotonic()
        time.sleep(rng.uniform(0.055, 0.3))
        # Printed by the next callback, so the block's own callback is only the sleep: its
        # duration is what loopspy should report, to within the loop's own bookkeeping.
        loop.call_soon(reported, t0, time.monotonic(), time.time())
        await asyncio.sleep(0.03)


async def main(n):
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    say("READY", tid=native_id())
    await wait_go()
    await blocks(n)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
