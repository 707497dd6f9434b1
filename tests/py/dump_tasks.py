"""Targets for tests/integration/dump.rs: named and default-named asyncio tasks.

Protocol (as tests/py/scenarios.py): prints `READY {json}` once its tasks run, waits for a line
on stdin, then runs its scenario and exits.

  nested    `fetcher` = create_task(a(), name="fetcher"): a awaits b, b awaits asyncio.sleep;
            plus a default-named `idle_worker` task. READY carries the default name, the await
            lines, the timer count and the pending-task count. Exits on the stdin line.
  blocking  after the stdin line, a task named "fetcher" blocks the loop twice in time.sleep
            (inside load(), awaited by fetch()), then a default-named task blocks once in
            crunch(); one `BLOCK {json}` line per block with the task's name and coroutine.
"""
import asyncio
import json
import sys
import threading
import time

GO = threading.Event()
LINES = {}


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def here(name):
    """Record the line after the caller's current one: the await to check."""
    LINES[name] = sys._getframe(1).f_lineno + 1


def read_go():
    sys.stdin.readline()
    GO.set()


async def wait_go():
    loop = asyncio.get_running_loop()
    while not GO.is_set():
        await loop.run_in_executor(None, GO.wait, 0.5)


async def b():
    here("b")
    await asyncio.sleep(3600)


async def a():
    here("a")
    await b()


async def idle_worker():
    await asyncio.sleep(3600)


async def nested():
    loop = asyncio.get_running_loop()
    fetcher = asyncio.create_task(a(), name="fetcher")
    worker = asyncio.create_task(idle_worker())
    for _ in range(3):
        await asyncio.sleep(0)
    say(
        "READY",
        tid=threading.get_native_id(),
        worker=worker.get_name(),
        lines=LINES,
        timers=len(loop._scheduled),
        pending=sum(1 for t in asyncio.all_tasks() if not t.done()),
    )
    await wait_go()
    fetcher.cancel()
    worker.cancel()


def report(t0):
    task = asyncio.current_task()
    say(
        "BLOCK",
        ms=(time.monotonic() - t0) * 1000.0,
        tid=threading.get_native_id(),
        thread=threading.current_thread().name,
        task=task.get_name(),
        coroutine=task.get_coro().__qualname__,
    )


async def load():
    t0 = time.monotonic()
    time.sleep(0.15)
    report(t0)


async def fetch():
    for _ in range(2):
        await load()
        await asyncio.sleep(0.05)


async def crunch():
    t0 = time.monotonic()
    time.sleep(0.15)
    report(t0)


async def blocking():
    threading.Thread(target=read_go, daemon=True).start()
    say("READY", tid=threading.get_native_id())
    await wait_go()
    await asyncio.create_task(fetch(), name="fetcher")
    await asyncio.sleep(0.05)
    await asyncio.create_task(crunch())


def main():
    if sys.argv[1] == "nested":
        threading.Thread(target=read_go, daemon=True).start()
        asyncio.run(nested())
    elif sys.argv[1] == "blocking":
        asyncio.run(blocking())
    else:
        sys.exit("unknown scenario " + sys.argv[1])


if __name__ == "__main__":
    main()
