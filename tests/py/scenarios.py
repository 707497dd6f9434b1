"""Targets for loopspy's live tests: one asyncio scenario per name.

Protocol: the script prints `READY {json}` once its loops run, waits for a line on stdin (the
test sends it once loopspy is attached), runs the scenario, prints one `BLOCK {json}` line per
blocking call with the duration measured inside the target, then exits. Lines marked
`# BLOCK-LINE name` are the lines the culprit must point at.

Usage: python scenarios.py NAME
"""
import asyncio
import json
import sys
import threading
import time

import loopgap  # noqa: F401  (the loop times its own iterations: GAP lines)

try:
    native_id = threading.get_native_id
except AttributeError:  # pragma: no cover - 3.8 has it; keep the script importable anyway
    native_id = threading.get_ident

GO = threading.Event()


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def report(name, t0):
    # `start`: the block's start on the wall clock (Unix seconds), like an episode's.
    now, wall = time.monotonic(), time.time()
    say("BLOCK", name=name, ms=(now - t0) * 1000.0, t0=t0, tid=native_id(),
        thread=threading.current_thread().name, start=wall - (now - t0))


def burn(seconds):
    """Pure-Python CPU work for about `seconds`."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:  # BLOCK-LINE burn
        n += 1
    return n


async def wait_go():
    loop = asyncio.get_running_loop()
    while not GO.is_set():
        await loop.run_in_executor(None, GO.wait, 0.5)


def read_go():
    sys.stdin.readline()
    GO.set()


# --- scenarios run on one loop -------------------------------------------------------------

async def sleepy_handler(n, seconds, gap):
    for _ in range(n):
        t0 = time.monotonic()
        time.sleep(seconds)  # BLOCK-LINE sleep
        report("sleep", t0)
        await asyncio.sleep(gap)


async def cpu_handler():
    for _ in range(3):
        t0 = time.monotonic()
        burn(0.15)
        report("cpu", t0)
        await asyncio.sleep(0.1)


def slow_callback(done):
    t0 = time.monotonic()
    time.sleep(0.12)  # BLOCK-LINE call_later
    report("call_later", t0)
    done.set_result(None)


async def call_later_main():
    loop = asyncio.get_running_loop()
    for _ in range(3):
        done = loop.create_future()
        loop.call_later(0.02, slow_callback, done)
        await done
        await asyncio.sleep(0.05)


async def idle_main():
    await asyncio.sleep(1.0)


async def short_step():
    burn(0.002)


async def short_callbacks_main():
    # Many short callbacks: a task that yields between 2 ms slices, and a crowd of tiny tasks.
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        burn(0.002)
        await asyncio.sleep(0)
    await asyncio.gather(*(short_step() for _ in range(200)))


async def to_thread_main():
    loop = asyncio.get_running_loop()
    for _ in range(3):
        await loop.run_in_executor(None, time.sleep, 0.15)


async def threshold_main():
    for seconds in (0.02, 0.02, 0.02, 0.07, 0.07):
        t0 = time.monotonic()
        time.sleep(seconds)  # BLOCK-LINE threshold
        report("sleep", t0)
        await asyncio.sleep(0.05)


def first_callback():
    t0 = time.monotonic()
    time.sleep(0.1)  # BLOCK-LINE first
    report("first", t0)


def second_callback():
    t0 = time.monotonic()
    time.sleep(0.1)  # BLOCK-LINE second
    report("second", t0)


async def twin():
    t0 = time.monotonic()
    time.sleep(0.1)  # BLOCK-LINE twin
    report("twin", t0)


async def back_to_back_main():
    # Two different plain callbacks dispatched in one loop iteration ...
    loop = asyncio.get_running_loop()
    loop.call_soon(first_callback)
    loop.call_soon(second_callback)
    await asyncio.sleep(0.3)
    # ... then two tasks with the same coroutine, stepped back to back.
    await asyncio.gather(twin(), twin())


async def exit_mid_block_main():
    # Another thread ends the process while the loop is inside a 2 s block.
    import os
    threading.Timer(0.3, os._exit, args=(0,)).start()
    time.sleep(2.0)  # BLOCK-LINE exit


async def long_block_main():
    time.sleep(5.0)  # BLOCK-LINE long


async def blocked_at_attach_main():
    # READY comes from inside the callback, right before it blocks: loopspy attaches mid-block.
    t0 = time.monotonic()
    say("READY", tid=native_id(), wall=time.time())
    time.sleep(2.0)  # BLOCK-LINE attach
    report("attach", t0)
    await asyncio.sleep(0.1)


async def restart_blocks():
    for _ in range(2):
        t0 = time.monotonic()
        time.sleep(0.12)  # BLOCK-LINE restart
        report("restart", t0)
        await asyncio.sleep(0.05)


def restart_loops():
    """Three loops in a row on the main thread (asyncio.run three times), each blocking twice."""
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()

    async def first():
        say("READY", tid=native_id())
        await wait_go()
        await restart_blocks()
    asyncio.run(first())
    asyncio.run(restart_blocks())
    asyncio.run(restart_blocks())


SINGLE = {
    "long_block": long_block_main,
    "back_to_back": back_to_back_main,
    "exit_mid_block": exit_mid_block_main,
    "sleep_task": lambda: sleepy_handler(3, 0.15, 0.1),
    "sleep_task_5": lambda: sleepy_handler(5, 0.15, 0.1),
    "cpu_task": cpu_handler,
    "call_later": call_later_main,
    "idle": idle_main,
    "short_callbacks": short_callbacks_main,
    "to_thread": to_thread_main,
    "threshold": threshold_main,
}


async def single_main(body):
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    say("READY", tid=native_id())
    await wait_go()
    await body()


def run_loop_in_thread(name, main, started):
    def target():
        async def wrapped():
            started.set()
            await main()
        asyncio.run(wrapped())
    t = threading.Thread(target=target, name=name)
    t.start()
    return t


async def calm_main():
    await wait_go_thread()
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        await asyncio.sleep(0.001)


async def blocking_thread_main():
    await wait_go_thread()
    await sleepy_handler(3, 0.15, 0.1)


async def wait_go_thread():
    while not GO.is_set():
        await asyncio.sleep(0.01)


def threaded(names_and_mains):
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    tids = {}
    threads = []
    for name, main in names_and_mains:
        started = threading.Event()
        t = run_loop_in_thread(name, main, started)
        started.wait()
        tids[name] = t.native_id
        threads.append(t)
    say("READY", tid=native_id(), threads=tids)
    for t in threads:
        t.join()


def main():
    name = sys.argv[1]
    if name in SINGLE:
        asyncio.run(single_main(SINGLE[name]))
    elif name == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(single_main(lambda: sleepy_handler(3, 0.15, 0.1)))
    elif name == "blocked_at_attach":
        asyncio.run(blocked_at_attach_main())
    elif name == "uvloop_blocked_at_attach":
        # No runner frame (run_until_complete is Cython) and no idle sample before the block:
        # only the task being stepped says where the callback starts.
        import uvloop
        uvloop.new_event_loop().run_until_complete(blocked_at_attach_main())
    elif name == "restart_loops":
        restart_loops()
    elif name == "thread_loop":
        threaded([("loop-thread", blocking_thread_main)])
    elif name == "thread_ends":
        # A loop thread blocks, finishes and disappears; the main thread lives on.
        threaded([("short-lived-loop", blocking_thread_main)])
        threading.Event().wait(0.3)
    elif name == "two_loops":
        threaded([("blocking-loop", blocking_thread_main), ("calm-loop", calm_main)])
    else:
        sys.exit("unknown scenario " + name)


if __name__ == "__main__":
    main()
