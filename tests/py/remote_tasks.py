"""Target for the task-reader live tests in src/remote/tests/tasks.rs.

The main thread runs asyncio.run(main()). main starts:
  fetcher        create_task(outer(), name="fetcher"): outer awaits inner, which awaits
                 asyncio.sleep (the await chain outer -> inner -> sleep -> a Future)
  3 workers      create_task(idle_worker(i)), default names Task-N, each in asyncio.sleep
  waiter         create_task(wait_for_fetcher(...), name="waiter"): awaits the fetcher task
Once they all sleep it prints one line
  READY {"tid": ..., "workers": [...], "lines": {...}, "timers": N, "pending": N}
and serves commands read from stdin (in an executor thread, so the loop stays idle):
  block          a task named "blocker" blocks the loop reading stdin after printing
                 "BLOCKING blocker"; the next line unblocks it
  block_default  the same with a default-named task: "BLOCKING Task-N"
Exits when stdin reaches EOF. `--uvloop` runs the loop with uvloop.
"""
import asyncio
import json
import sys
import threading

LINES = {}


def here(name):
    """Record the line of the caller's next line (the await to check)."""
    LINES[name] = sys._getframe(1).f_lineno + 1


async def inner():
    here("inner")
    await asyncio.sleep(3600)


async def outer():
    here("outer")
    await inner()


async def idle_worker(i):
    await asyncio.sleep(3600 + i)


async def wait_for_fetcher(task):
    await task


async def blocker_coro():
    print("BLOCKING", asyncio.current_task().get_name(), flush=True)
    sys.stdin.readline()  # blocks the whole loop inside this task


async def main():
    loop = asyncio.get_running_loop()
    fetcher = asyncio.create_task(outer(), name="fetcher")
    workers = [asyncio.create_task(idle_worker(i)) for i in range(3)]
    waiter = asyncio.create_task(wait_for_fetcher(fetcher), name="waiter")
    for _ in range(3):
        await asyncio.sleep(0)
    pending = sum(1 for t in asyncio.all_tasks() if not t.done())
    info = {
        "tid": threading.get_native_id(),
        "workers": [w.get_name() for w in workers],
        "lines": LINES,
        "timers": len(loop._scheduled) if hasattr(loop, "_scheduled") else None,
        "pending": pending,
        "uvloop": "--uvloop" in sys.argv,
    }
    print("READY", json.dumps(info), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd = line.strip()
        if cmd == "block":
            await asyncio.create_task(blocker_coro(), name="blocker")
        elif cmd == "block_default":
            await asyncio.create_task(blocker_coro())
    waiter.cancel()


if "--uvloop" in sys.argv:
    import uvloop

    uvloop.install()
asyncio.run(main())
