"""A churning asyncio service for long runs (scripts/soak.py): everything loopspy follows keeps
being created and destroyed while it samples.

- the main loop starts short tasks continuously (each a few awaits and a little work);
- short-lived threads each run their own event loop for a moment (`asyncio.run`), some of
  which block it, then exit, so loop threads come and go;
- plain worker threads and executor jobs start and end;
- now and then a callback on the main loop blocks it (time.sleep, pure-Python CPU, a
  `call_soon` callback that sleeps): these are the episodes loopspy should find;
- `multiprocessing` worker processes (spawn) each run a small loop of their own, and the oldest
  is replaced every --restart seconds.

Prints `READY {"pid": ..., "tid": ...}` once the churn is under way. Stops after --seconds, or
when stdin reaches EOF, whichever comes first; prints `STATS {...}` with how much it churned.

    python3 tests/py/churn.py [--seconds 1800] [--workers 2] [--restart 20]
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import threading
import time

STATS = {"tasks": 0, "loop_threads": 0, "plain_threads": 0, "blocks": 0, "worker_restarts": 0}
LOCK = threading.Lock()


def count(key, n=1):
    with LOCK:
        STATS[key] += n


def burn(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def blocking_sleep(seconds):
    time.sleep(seconds)


# --- short tasks on the main loop ---------------------------------------------------------

async def short_task(i):
    for _ in range(random.randint(1, 4)):
        await asyncio.sleep(random.uniform(0.0, 0.01))
    if i % 7 == 0:
        burn(0.001)
    count("tasks")


async def task_churn():
    i = 0
    while True:
        for _ in range(random.randint(1, 5)):
            asyncio.ensure_future(short_task(i))
            i += 1
        await asyncio.sleep(0.01)


# --- loops in short-lived threads ---------------------------------------------------------

async def thread_loop_body(seconds, block):
    end = time.monotonic() + seconds
    tasks = [asyncio.ensure_future(short_task(k)) for k in range(random.randint(1, 6))]
    while time.monotonic() < end:
        await asyncio.sleep(0.005)
        if block and random.random() < 0.02:
            blocking_sleep(random.uniform(0.06, 0.12))
            count("blocks")
    await asyncio.gather(*tasks)


def loop_thread(seconds, block):
    asyncio.run(thread_loop_body(seconds, block))
    count("loop_threads")


async def loop_thread_churn():
    while True:
        t = threading.Thread(target=loop_thread,
                             args=(random.uniform(0.05, 1.5), random.random() < 0.3),
                             daemon=True)
        t.start()
        await asyncio.sleep(random.uniform(0.05, 0.4))


# --- plain threads and executor jobs ------------------------------------------------------

def plain_work():
    time.sleep(random.uniform(0.001, 0.05))
    count("plain_threads")


async def plain_thread_churn():
    loop = asyncio.get_running_loop()
    while True:
        threading.Thread(target=plain_work, daemon=True).start()
        await loop.run_in_executor(None, time.sleep, random.uniform(0.0, 0.02))
        await asyncio.sleep(random.uniform(0.02, 0.1))


# --- blocking on the main loop ------------------------------------------------------------

def slow_callback(seconds):
    time.sleep(seconds)


async def main_loop_blocks():
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(random.uniform(0.5, 3.0))
        what = random.randrange(3)
        if what == 0:
            blocking_sleep(random.uniform(0.06, 0.2))
        elif what == 1:
            burn(random.uniform(0.06, 0.12))
        else:
            loop.call_soon(slow_callback, random.uniform(0.06, 0.15))
        count("blocks")


# --- multiprocessing workers --------------------------------------------------------------

async def worker_main():
    while True:
        await asyncio.sleep(random.uniform(0.01, 0.1))
        if random.random() < 0.01:
            time.sleep(0.07)


def worker():
    asyncio.run(worker_main())


async def worker_churn(n, every):
    ctx = multiprocessing.get_context("spawn")
    workers = []
    loop = asyncio.get_running_loop()
    try:
        while True:
            while len(workers) < n:
                p = ctx.Process(target=worker, daemon=True)
                # Starting a spawn worker blocks for a while: do it off the loop.
                await loop.run_in_executor(None, p.start)
                workers.append(p)
            await asyncio.sleep(every)
            old = workers.pop(0)
            old.terminate()
            await loop.run_in_executor(None, old.join)
            count("worker_restarts")
    finally:
        for p in workers:
            p.terminate()


# --- main ---------------------------------------------------------------------------------

async def amain(args):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch_stdin():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True, name="stdin-watcher").start()
    jobs = [asyncio.ensure_future(c) for c in (
        task_churn(), loop_thread_churn(), plain_thread_churn(), main_loop_blocks(),
        worker_churn(args.workers, args.restart))]
    print("READY " + json.dumps({"pid": os.getpid(), "tid": threading.get_native_id()}),
          flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except asyncio.TimeoutError:
        pass
    for j in jobs:
        j.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    with LOCK:
        print("STATS " + json.dumps(STATS), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1800.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--restart", type=float, default=20.0)
    args = ap.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
