"""Hostile targets for loopspy's tests (tests/integration/hostile.rs): names with terminal
escapes, code compiled under file names that point at files the test planted (a FIFO, a huge
sparse file, a leased file, a file rewritten after the start), a process that exec()s, a main
thread that calls pthread_exit.

Protocol (as tests/py/scenarios.py): `READY {json}` once the loop runs, then wait for a line on
stdin, run the scenario, print one `BLOCK {json}` per blocking call with the duration measured
here, exit. Its loops print their own selector gaps (`GAP` lines, tests/py/loopgap.py), which
the tests compare episodes with; not in `loop`, whose stdout is `loopspy top`'s.

Usage: python hostile.py SCENARIO [ARGS...]
"""
import asyncio
import ctypes
import fcntl
import json
import os
import signal
import sys
import threading
import time

HOSTILE = "\x1b]0;PWNED\x07\r\nFAKE LINE \x1b[31mred"

# The blocking code as loaded: line 3 sleeps. The file of the same name may say otherwise.
SOURCE = "import time\ndef handler(seconds):\n    time.sleep(seconds)\n"
# What a planted or rewritten file says at line 3: a psycopg2 query, which a reader of the
# file would blame.
DECOY = "import psycopg2\ndef handler(seconds):\n    cur.execute('select pg_sleep(1)')\n"


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def native_id():
    return threading.get_native_id()


def loaded(name):
    """`handler` compiled from SOURCE under the file name `name`."""
    scope = {}
    exec(compile(SOURCE, name, "exec"), scope)
    return scope["handler"]


async def blocks(handler, n, seconds, gap=0.1):
    for _ in range(n):
        say("START")
        t0 = time.monotonic()
        handler(seconds)
        say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, t0=t0, tid=native_id())
        await asyncio.sleep(gap)


async def wait_line():
    """Wait for the test's "go" without blocking the loop."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)


async def ready_then(handler, n, seconds, **extra):
    say("READY", pid=os.getpid(), tid=native_id(), **extra)
    await wait_line()
    await blocks(handler, n, seconds)


def names():
    """A loop thread, a function and a file all named with terminal escapes and a line break."""
    threading.current_thread().name = HOSTILE
    scope = {}
    exec(compile(SOURCE, "/nonexistent/" + HOSTILE + ".py", "exec"), scope)
    handler = scope["handler"]
    code = handler.__code__
    fields = {"co_name": HOSTILE}
    if sys.version_info >= (3, 11):
        fields["co_qualname"] = HOSTILE
    handler.__code__ = code.replace(**fields)
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3

    async def main():
        # The task that blocks is named with the escapes too.
        await asyncio.get_running_loop().create_task(
            ready_then(handler, 2, seconds), name=HOSTILE)
    asyncio.run(main())


def source(path, mode):
    """Blocks in code loaded under `path`. `rewrite`: the file is rewritten after the start
    (a deploy under a running process); `lease`: this process holds a write lease on it, so an
    open by anyone else waits up to /proc/sys/fs/lease-break-time (45 s)."""
    handler = loaded(path)
    holder = None
    if mode == "rewrite":
        with open(path, "w") as f:
            f.write(DECOY)
    elif mode == "lease":
        # The lease break is announced with SIGIO, whose default action kills: ignore it and
        # keep the lease, as a hostile target would.
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        holder = os.open(path, os.O_RDONLY)
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    asyncio.run(ready_then(handler, 2, 0.3))


def exec_into(what):
    """After "go", one callback exec()s: into `sleep` (not Python) or into this script's
    `stage2` (Python, which then blocks after a second "go")."""
    async def main():
        say("READY", pid=os.getpid(), tid=native_id())
        await wait_line()
        await asyncio.sleep(0.1)
        sys.stdout.flush()
        if what == "sleep":
            os.execv("/bin/sleep", ["sleep", "2.5"])
        os.execv(sys.executable, [sys.executable, __file__, "stage2"])
    asyncio.run(main())


def stage2():
    asyncio.run(ready_then(loaded(__file__ + ":stage2"), 3, 0.2, stage=2))


def leader_exited():
    with open("/proc/self/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "ZX"


def pthread_exit(when):
    """The main thread calls pthread_exit while a loop thread runs on. `early`: before READY
    (the test attaches to a process whose leader is a zombie); `late`: after "go" (the test
    attached before)."""
    go = threading.Event()

    def loop_thread():
        async def main():
            if when == "early":
                while not leader_exited():
                    await asyncio.sleep(0.01)
                say("READY", pid=os.getpid(), tid=native_id())
                await wait_line()
            else:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, go.wait)
                while not leader_exited():
                    await asyncio.sleep(0.01)
                # Once loopspy has noticed (it says so), the test sends another line.
                say("READY", pid=os.getpid(), tid=native_id(), stage=2)
                await wait_line()
            await blocks(loaded("<pthread_exit>"), 3, 0.2)
        asyncio.run(main())
        sys.stdout.flush()
        os._exit(0)

    t = threading.Thread(target=loop_thread, name="loop-thread")
    t.start()
    if when == "late":
        say("READY", pid=os.getpid())
        sys.stdin.readline()
        go.set()
    libc = ctypes.CDLL(None)
    libc.pthread_exit(None)


def plain_loop():
    """Blocks 80 ms in every 130 until stopped: for `top` and signal tests, which end loopspy
    themselves. Never reads stdin (under `top` in a terminal, the keys are loopspy's)."""
    async def main():
        say("READY", pid=os.getpid(), tid=native_id())
        handler = loaded("<plain>")
        while True:
            handler(0.08)
            await asyncio.sleep(0.05)
    asyncio.run(main())


if __name__ == "__main__":
    scenario = sys.argv[1]
    if scenario != "loop":
        import loopgap  # noqa: F401  (the loop times its own iterations: GAP lines)
    if scenario == "names":
        names()
    elif scenario == "source":
        source(sys.argv[2], sys.argv[3])
    elif scenario == "exec":
        exec_into(sys.argv[2])
    elif scenario == "stage2":
        stage2()
    elif scenario == "pthread_exit":
        pthread_exit(sys.argv[2])
    elif scenario == "loop":
        plain_loop()
    else:
        sys.exit("unknown scenario " + scenario)
