"""Targets for the blocking-cause tests: each scenario blocks its asyncio loop twice in one way
(sleep, HTTP, socket, a FIFO, fsync, sqlite, subprocess, logging, CPU, a C call, GIL starvation,
a lock, and the kinds of causes_advice.py) and prints a BLOCK line with the duration measured
inside the target. Same READY / go protocol as scenarios.py. Lines marked `# CAUSE name` are
where the culprit must point.

Usage: python causes.py NAME
"""
import asyncio
import logging
import logging.handlers
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import causes_advice  # noqa: E402
from scenarios import native_id, read_go, report, say, wait_go  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PORT = None


def start_server():
    global PORT
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "slow_server.py"), "0.15"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    PORT = int(proc.stdout.readline())
    return proc


def block_sleep():
    time.sleep(0.15)  # CAUSE sleep


def block_urllib():
    urllib.request.urlopen("http://127.0.0.1:%d/" % PORT).read()  # CAUSE urllib


def block_requests():
    import requests
    requests.get("http://127.0.0.1:%d/" % PORT)  # CAUSE requests


def block_socket():
    s = socket.create_connection(("127.0.0.1", PORT))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    s.recv(100)  # CAUSE socket
    s.close()


def block_fsync():
    with tempfile.TemporaryFile() as f:
        t_end = time.monotonic() + 0.15
        while time.monotonic() < t_end:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())  # CAUSE fsync


def block_file_read():
    # An open that waits on a FIFO whose writer (another thread) is 150 ms late: a pipe, not
    # disk I/O, although the call is the same `open` as for a file.
    path = tempfile.mktemp(prefix="loopspy-fifo-")
    os.mkfifo(path)
    writer = threading.Timer(0.15, lambda: open(path, "w").write("late\n"))
    writer.start()
    with open(path) as f:  # CAUSE file_read
        f.read()
    writer.join()
    os.unlink(path)


DB = sqlite3.connect(":memory:")


def block_sqlite():
    DB.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT sum(x) FROM c").fetchone()  # CAUSE sqlite


def block_subprocess():
    subprocess.run(["sleep", "0.15"])  # CAUSE subprocess


LOG = logging.getLogger("audit")


def block_logging():
    LOG.warning("audit event")  # CAUSE logging


def block_cpu():
    total = 0
    for i in range(6_000_000):  # CAUSE cpu
        total += i
    return total


def block_c_call():
    # Repeated until 150 ms: one sum over 12M took 58-68 ms on Debian's builds, 174 ms on
    # pyenv's 3.13, so a fixed size could fall under the 50 ms threshold.
    end = causes_advice.until()
    while time.monotonic() < end:
        sum(range(1_000_000))  # CAUSE c_call


LOCK = threading.Lock()


def block_lock():
    holder = threading.Thread(target=hold_lock, name="lock-holder")
    LOCK_TAKEN.clear()
    holder.start()
    LOCK_TAKEN.wait()
    LOCK.acquire()  # CAUSE lock
    LOCK.release()
    holder.join()


LOCK_TAKEN = threading.Event()


def hold_lock():
    with LOCK:
        LOCK_TAKEN.set()
        time.sleep(0.15)


BLOCKERS = {
    "sleep": block_sleep, "urllib": block_urllib, "requests": block_requests,
    "socket": block_socket, "fsync": block_fsync, "file_read": block_file_read, "sqlite": block_sqlite,
    "subprocess": block_subprocess, "logging": block_logging, "cpu": block_cpu,
    "c_call": block_c_call, "lock": block_lock,
}
BLOCKERS.update(causes_advice.BLOCKERS)


def long_c_call():
    sum(range(25_000_000))  # CAUSE gil


GIL_WORK = dict(causes_advice.GIL_WORK, gil=long_c_call)


def gil_hog(name, loop_tid):
    """A thread holding the GIL in one long C call while the loop wants to wake up. Its BLOCK
    names the loop it stalls (`loop_tid`): the test times the stall by that loop's own GAP, as
    the call's time is not the loop's. The loop takes the GIL back as soon as the long C call
    returns, while the holder's call goes on: 3.15's holder then frees the ~100 MB it decoded
    for another 3-10 ms (measured here), which a callback that has already ended never sees."""
    t0 = time.monotonic()
    GIL_WORK[name]()
    say("BLOCK", name=name, ms=(time.monotonic() - t0) * 1000.0, t0=t0, tid=native_id(),
        loop_tid=loop_tid, thread=threading.current_thread().name)


async def handler(name):
    for _ in range(2):
        t0 = time.monotonic()
        BLOCKERS[name]()
        report(name, t0)
        await asyncio.sleep(0.1)


async def ticker(seconds):
    """Keep the loop waking up every 5 ms, so a GIL hog starves it."""
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        await asyncio.sleep(0.005)


async def main(name):
    await causes_advice.setup(name, PORT)
    threading.Thread(target=read_go, daemon=True, name="stdin-reader").start()
    say("READY", tid=native_id())
    await wait_go()
    if name in GIL_WORK:
        for _ in range(2):
            hog = threading.Thread(target=gil_hog, args=(name, native_id()), name="gil-hog")
            hog.start()
            await ticker(0.05)
            while hog.is_alive():
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)
    else:
        await handler(name)


if __name__ == "__main__":
    scenario = sys.argv[1]
    needs_server = ("urllib", "requests", "socket", "logging") + causes_advice.NEEDS_SERVER
    server = start_server() if scenario in needs_server else None
    if scenario == "logging":
        LOG.addHandler(logging.handlers.HTTPHandler("127.0.0.1:%d" % PORT, "/log", method="GET"))
    if scenario == "requests":
        import requests  # noqa: F401  (fail before READY when it is missing)
    try:
        asyncio.run(main(scenario))
    finally:
        if server:
            server.stdin.close()
            server.wait()
