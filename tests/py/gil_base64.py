"""GIL starvation timed by the target itself (issue 10 §1): a worker thread decodes a large
base64 blob in `asyncio.to_thread` (binascii holds the GIL for the whole call), while a 5 ms
heartbeat task measures when the loop could not run.

Protocol: prints `READY {json}` once the loop runs, waits for a line on stdin (the test sends it
once loopspy samples), runs DECODES decodes 300 ms apart, then prints one `BLOCK {json}` line
per stall of the loop that lasted 50 ms or more, and exits. Each BLOCK gives the stall's
boundaries on the wall clock (`start`, `end`, Unix seconds, like an episode's `start`) and its
length in ms:

- a stall begins when a heartbeat was due (its timer's own deadline: the loop leaves its
  selector then and wants the GIL) and ends when the heartbeat runs again;
- a heartbeat step that itself took long (the loop lost the GIL inside it) is part of the stall.

Usage: python gil_base64.py [SIZE] [DECODES]

SIZE is the blob's size in megabytes (default 40), or a time such as `150ms`: a blob whose one
decode takes at least that long here. Decoding speed differs 10x between builds (40 MB took
32 ms on Debian's 3.15, 61 ms on pyenv's 3.9, 108 ms on pyenv's 3.13, on one machine), so only
a time keeps every stall past the 50 ms threshold.
"""
import asyncio
import base64
import json
import os
import sys
import threading
import time

try:
    native_id = threading.get_native_id
except AttributeError:  # pragma: no cover
    native_id = threading.get_ident

SIZE = sys.argv[1] if len(sys.argv) > 1 else "40"
DECODES = int(sys.argv[2]) if len(sys.argv) > 2 else 4
BEAT = 0.005
# Wall-clock time of a monotonic instant (loopspy reports episode starts in Unix seconds).
WALL = time.time() - time.monotonic()
if SIZE.endswith("ms"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from causes_advice import base64_taking

    blob = base64_taking(float(SIZE[:-2]) / 1000.0)
else:
    blob = base64.b64encode(os.urandom(int(float(SIZE) * 1_000_000)))
GO = threading.Event()


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def decode():  # binascii holds the GIL for the whole call
    base64.b64decode(blob)  # CAUSE gil_base64


async def beat(steps):
    """Record each step of the heartbeat: (resumed, suspended, due), monotonic seconds (the
    loop's clock). `due` is the deadline of the timer that wakes the next step: the step may
    lose the GIL between `suspended` and arming its timer (a worker thread just started asks
    for it), and the loop then rightly waits in its selector until the later deadline."""
    loop = asyncio.get_running_loop()
    while True:
        resumed = time.monotonic()
        woken = loop.create_future()
        # What asyncio.sleep(BEAT) does, keeping the handle: loopspy names the starved task
        # from this timer (its first argument is the future the task awaits).
        timer = loop.call_later(BEAT, asyncio.futures._set_result_unless_cancelled, woken, None)
        steps.append([resumed, time.monotonic(), timer.when()])
        await woken


def stalls(steps, threshold=0.05):
    """Intervals where the loop was unavailable for at least `threshold` s."""
    out = []
    cur = None
    for (_, _, due), (r1, s1, _) in zip(steps, steps[1:]):
        for lo, hi in ((due, r1), (r1, s1)):  # waiting past the due time; a slow step
            if hi - lo < 0.002:
                continue
            if cur and lo - cur[1] < 0.002:
                cur[1] = hi
            else:
                if cur:
                    out.append(cur)
                cur = [lo, hi]
    if cur:
        out.append(cur)
    return [s for s in out if s[1] - s[0] >= threshold]


async def main():
    threading.Thread(target=lambda: (sys.stdin.readline(), GO.set()), daemon=True,
                     name="stdin-reader").start()
    steps = []
    heart = asyncio.create_task(beat(steps), name="heartbeat")
    loop = asyncio.get_running_loop()
    # Start the executor's thread now: starting it later makes the loop wait on a lock inside
    # the step that calls to_thread, which the heartbeat cannot time.
    await loop.run_in_executor(None, int)
    say("READY", tid=native_id())
    while not GO.is_set():
        await loop.run_in_executor(None, GO.wait, 0.5)
    # Let the executor's worker go idle first: submitting while it is still finishing the wait
    # above starts a second thread, and the loop then waits on a lock (Thread.start) that the
    # GIL holder keeps it from getting, instead of on the GIL itself.
    await asyncio.sleep(0.05)
    for _ in range(DECODES):
        await asyncio.to_thread(decode) if hasattr(asyncio, "to_thread") else \
            await loop.run_in_executor(None, decode)
        await asyncio.sleep(0.3)
    heart.cancel()
    for lo, hi in stalls(steps):
        say("BLOCK", name="gil", start=lo + WALL, end=hi + WALL, ms=(hi - lo) * 1000.0,
            tid=native_id(), thread=threading.current_thread().name)


if __name__ == "__main__":
    asyncio.run(main())
