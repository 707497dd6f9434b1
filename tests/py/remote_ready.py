"""Target for the ready-queue live tests in src/remote/tests.rs.

The main thread runs a selector event loop (run_forever). Its first callback, `hold`,
call_soon's 5 callbacks, prints `READY <native tid>` and then blocks the loop by reading
stdin, so the 5 handles sit in `loop._ready` while the test reads it.

On the line "go" `hold` returns; the loop pops and runs the 5 callbacks, the last of which
call_soon's `hold` again; that second `hold` prints `HELD` and blocks again with an empty
ready queue. From READY to HELD the deque saw 5 pops, 1 append and 1 pop: its mutation
counter grew by exactly 7.

`--dict` materializes the loop's instance dict first (`vars(loop)`), so the attribute is
read through a dict instead of the values array (3.11+); `--combined` also adds a non-str
key, which turns the dict into a combined (general) table on every version.

Exits when stdin reaches EOF.
"""
import asyncio
import os
import sys
import threading

N = 5


def noop():
    pass


def last():
    loop.call_soon(hold, "HELD")


def hold(line):
    if line.startswith("READY"):
        for _ in range(N - 1):
            loop.call_soon(noop)
        loop.call_soon(last)
    print(line, flush=True)
    if not sys.stdin.readline():
        os._exit(0)


loop = asyncio.new_event_loop()
if "--dict" in sys.argv or "--combined" in sys.argv:
    vars(loop)
if "--combined" in sys.argv:
    vars(loop)[0] = 0
loop.call_soon(hold, "READY %d" % threading.get_native_id())
loop.run_forever()
