"""Targets for the task reader at scale (tests/integration/dump_scale.rs).

Protocol (as tests/py/dump_tasks.py): prints `READY {json}` once its tasks run, waits for a line
on stdin, then runs its scenario (if any) and exits.

  many N         N pending tasks all parked in `idle()` -> asyncio.sleep, plus one `fetcher`
                 task in a different chain (a -> sleep). READY: pending count.
  many_modules   more than 4096 entries in sys.modules, then tasks as in `many 10`, and after
                 the stdin line a task named `blocker` blocks the loop 150 ms in time.sleep.
  py_tasks       three pure-Python tasks (asyncio.tasks._PyTask) named py-0..2 parked in
                 `idle()`, and one C task; after the stdin line a pure-Python task `py-blocker`
                 blocks 150 ms.
  first_step     after the stdin line, three tasks whose very first step blocks 150 ms in
                 time.sleep (named first-0..2), one after the other.
  first_launch   no READY, no stdin: for `loopspy record -- python ...`. The main task's first
                 step blocks 150 ms at once (before loopspy may have mapped the loop), then
                 tasks first-0..2 as in first_step.
  blocked_dump   the loop blocks in time.sleep for 3 s inside a task (`stuck`); READY is printed
                 from a thread 200 ms into the block, with `blocked_since`, the block's start
                 on time.monotonic() (dump reads it while it lasts).

Each block prints `BLOCK {"ms": ..., "task": ...}`.
"""
import asyncio
import json
import sys
import threading
import time
import types

GO = threading.Event()


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def read_go():
    sys.stdin.readline()
    GO.set()


async def wait_go():
    loop = asyncio.get_running_loop()
    while not GO.is_set():
        await loop.run_in_executor(None, GO.wait, 0.5)


async def idle():
    await asyncio.sleep(3600)


async def a():
    await asyncio.sleep(3600)


def block(name):
    t0 = time.monotonic()
    time.sleep(0.15)
    say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, task=name)


async def blocker():
    block("blocker")


async def first_step_block(name):
    # No await before the block: it happens in the task's very first step.
    block(name)


async def many(n):
    tasks = [asyncio.create_task(idle()) for _ in range(n)]
    fetcher = asyncio.create_task(a(), name="fetcher")
    for _ in range(3):
        await asyncio.sleep(0)
    say("READY", pending=sum(1 for t in asyncio.all_tasks() if not t.done()), n=n)
    await wait_go()
    for t in tasks + [fetcher]:
        t.cancel()


async def many_modules():
    for i in range(5000):
        sys.modules["loopspy_dummy_%d" % i] = types.ModuleType("loopspy_dummy_%d" % i)
    tasks = [asyncio.create_task(idle()) for _ in range(10)]
    for _ in range(3):
        await asyncio.sleep(0)
    say("READY", modules=len(sys.modules), pending=sum(1 for t in asyncio.all_tasks() if not t.done()))
    await wait_go()
    await asyncio.create_task(blocker(), name="blocker")
    for t in tasks:
        t.cancel()


async def py_tasks():
    loop = asyncio.get_running_loop()
    PyTask = asyncio.tasks._PyTask
    tasks = [PyTask(idle(), loop=loop, name="py-%d" % i) for i in range(3)]
    c_task = asyncio.create_task(idle(), name="c-task")
    for _ in range(3):
        await asyncio.sleep(0)
    # 3.14's all_tasks() leaves out pure-Python tasks (they are in neither the per-thread
    # lists nor its scan), so they are counted by hand.
    live = set(asyncio.all_tasks()) | set(tasks) | {c_task}
    say("READY", pending=sum(1 for t in live if not t.done()))
    await wait_go()
    await PyTask(blocker_named("py-blocker"), loop=loop, name="py-blocker")
    for t in tasks + [c_task]:
        t.cancel()


async def blocker_named(name):
    await asyncio.sleep(0)
    block(name)


async def first_step():
    say("READY")
    await wait_go()
    for i in range(3):
        name = "first-%d" % i
        await asyncio.create_task(first_step_block(name), name=name)
        await asyncio.sleep(0.05)


async def first_launch():
    block("Task-1")
    for i in range(3):
        name = "first-%d" % i
        await asyncio.create_task(first_step_block(name), name=name)
        await asyncio.sleep(0.05)


async def stuck():
    t0 = time.monotonic()
    threading.Timer(0.2, lambda: say("READY", blocked_since=t0)).start()
    time.sleep(3)


async def blocked_dump():
    await asyncio.create_task(stuck(), name="stuck")


def main():
    what = sys.argv[1]
    if what != "first_launch":
        threading.Thread(target=read_go, daemon=True).start()
    if what == "many":
        asyncio.run(many(int(sys.argv[2])))
    elif what == "many_modules":
        asyncio.run(many_modules())
    elif what == "py_tasks":
        asyncio.run(py_tasks())
    elif what == "first_step":
        asyncio.run(first_step())
    elif what == "first_launch":
        asyncio.run(first_launch())
    elif what == "blocked_dump":
        asyncio.run(blocked_dump())
    else:
        sys.exit("unknown scenario " + what)


if __name__ == "__main__":
    main()
