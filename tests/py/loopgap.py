"""The loop's own timing of its iterations: the reference the live tests compare episodes with.

An episode is a callback that kept the loop out of its selector, from the selector's return to
its next call. A target that times only its blocking call (`t0` to the BLOCK line) misses what
runs around it in the same callback: the GIL hand-off when its `print` releases the GIL, and
time the loop thread waits for a CPU on a loaded machine (the kernel clock rightly counts both).

Importing this module makes every new asyncio selector loop of the process time its gaps: each
`select()` call ends a gap begun at the previous `select()` return. A gap of GAP_MIN_MS or more is
printed as `GAP {"start": s, "end": s, "ms": ms, "tid": N, "pid": N}` (monotonic seconds) right
after the selector returns, so the printing falls in the next gap, never in the one measured.
The tests match a BLOCK line to the GAP of its thread that contains the block's `t0`.
uvloop loops have no Python selector and print no GAP lines.
"""
import json
import os
import selectors
import sys
import threading
import time

GAP_MIN_MS = 20.0


class _TimedSelector(selectors.DefaultSelector):
    def __init__(self):
        super().__init__()
        self._left = None

    def select(self, timeout=None):
        entered = time.monotonic()
        events = super().select(timeout)
        left, self._left = self._left, time.monotonic()
        if left is not None and (entered - left) * 1000.0 >= GAP_MIN_MS:
            gap = {"start": left, "end": entered, "ms": (entered - left) * 1000.0,
                   "tid": threading.get_native_id(), "pid": os.getpid()}
            # One write, as a thread's print() could interleave with another's line.
            sys.stdout.write("GAP %s\n" % json.dumps(gap))
            sys.stdout.flush()
        return events


selectors.DefaultSelector = _TimedSelector
