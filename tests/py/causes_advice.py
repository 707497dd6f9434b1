"""More blocking causes for tests/py/causes.py (which runs them): work whose fix depends on what
it did with the GIL (a backtracking regex, the GC, an import, JSON, pickle, base64, YAML,
FastAPI's encoder and pydantic hold it; hashlib and zlib release it), what a blocked call waits
on (a full stdout pipe, a pipe to a child, a socket read with read(2), a call to the process's
own server), a driver under an ORM, blocking code run by machinery (a logging handler of our
own, a finalizer) and code generated at run time. Lines marked `# CAUSE name` are where the
culprit must point. Every blocker takes about 150 ms and works on CPython 3.8 and later.
"""
import asyncio
import base64
import dataclasses
import functools
import gc
import hashlib
import importlib
import json
import logging
import os
import pickle
import re
import socket
import sqlite3  # noqa: F401  (the SQLAlchemy scenarios run on it)
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import weakref
import zlib

SECONDS = 0.15
STATE = {}


def until():
    return time.monotonic() + SECONDS


# --- work that holds the GIL ---------------------------------------------------------------

REGEX = r"(a+)+$"
PATTERN = re.compile(REGEX)


def backtracking_text(seconds):
    """A string on which REGEX backtracks for at least `seconds` (each extra `a` doubles it)."""
    n = 12
    while True:
        text = "a" * n + "b"
        t0 = time.perf_counter()
        PATTERN.match(text)
        if time.perf_counter() - t0 >= seconds:
            return text
        n += 1


def sized_to_take(seconds, make, run, size):
    """`make(size)`'s data, with `size` grown until `run(data)` takes `seconds` or a little more
    here (the best of two timings; at most 8 tries, each growing `size` at most 4x). The same work
    runs 5-10x faster on some builds than on others, so a fixed size can fall under the 50 ms
    threshold."""
    for _ in range(8):
        data = make(size)
        took = []
        for _ in range(2):
            t0 = time.perf_counter()
            run(data)
            took.append(time.perf_counter() - t0)
        if min(took) >= seconds:
            break
        size = int(size * min(4.0, 1.3 * seconds / max(min(took), 1e-4)))
    return data


def base64_taking(seconds):
    """A base64 blob whose one decode takes `seconds` or a little more here (30 MB took 15 ms on
    one 3.15, 200 ms on an older machine's 3.8)."""
    return sized_to_take(seconds, lambda size: base64.b64encode(os.urandom(size)),
                         base64.b64decode, 4_000_000)


def block_regex():
    t_end = until()
    while time.monotonic() < t_end:
        re.match(REGEX, STATE["text"])  # CAUSE regex


def block_regex_compiled():
    t_end = until()
    while time.monotonic() < t_end:
        PATTERN.match(STATE["text"])  # CAUSE regex_compiled


def heap_taking(seconds):
    """A heap whose one full collection takes `seconds` or a little more here (600k entries took
    42 ms on Debian's 3.11, 90 ms on one 3.14). One call, not a loop of them: `gil_gc` needs one
    collection that holds the GIL throughout."""
    heap = []

    def grow(size):
        heap.extend([i, {"k": i}, (i,)] for i in range(len(heap), size))
        return heap

    return sized_to_take(seconds, grow, lambda _: gc.collect(), 600_000)


def block_gc():
    gc.collect()  # CAUSE gc


collect = gc.collect


def block_gc_flag():
    # No `gc.collect(` on this line: only the interpreter's GC state can name the collector.
    collect()  # CAUSE gc_flag


HEAVY = "loopspy_heavy_module"


def write_heavy_module():
    d = tempfile.mkdtemp(prefix="loopspy-import-")
    with open(os.path.join(d, HEAVY + ".py"), "w") as f:
        f.write("import time\n_end = time.monotonic() + %r\nwhile time.monotonic() < _end:\n"
                "    pass\n" % SECONDS)
    sys.path.insert(0, d)
    importlib.invalidate_caches()


def block_import():
    sys.modules.pop(HEAVY, None)
    import loopspy_heavy_module  # noqa: F401  # CAUSE import


ROWS = [{"id": i, "name": "row %d" % i, "tags": ["a", "b"], "score": i * 0.5}
        for i in range(20_000)]
PAGE = {"rows": ROWS}
# Pure-Python encoders and validators take seconds over PAGE on a slow CPython 3.8.
SMALL_PAGE = {"rows": ROWS[:1000]}


def block_json():
    t_end = until()
    while time.monotonic() < t_end:
        json.dumps(PAGE)  # CAUSE json


def block_pickle():
    t_end = until()
    while time.monotonic() < t_end:
        pickle.dumps(PAGE)  # CAUSE pickle


def block_base64():
    t_end = until()
    while time.monotonic() < t_end:
        base64.b64encode(STATE["blob"])  # CAUSE base64


def block_yaml():
    t_end = until()
    while time.monotonic() < t_end:
        STATE["yaml"].safe_load(STATE["doc"])  # CAUSE yaml


def block_fastapi():
    jsonable_encoder = STATE["encoder"]
    t_end = until()
    while time.monotonic() < t_end:
        jsonable_encoder(SMALL_PAGE)  # CAUSE fastapi


def pydantic_page():
    from typing import List

    import pydantic

    class Row(pydantic.BaseModel):
        id: int
        name: str
        tags: List[str]
        score: float

    class Page(pydantic.BaseModel):
        rows: List[Row]

    return Page


def block_pydantic():
    page = STATE["page"]
    validate = getattr(page, "model_validate", None) or page.parse_obj
    t_end = until()
    while time.monotonic() < t_end:
        validate(SMALL_PAGE)  # CAUSE pydantic


# --- work that releases the GIL ------------------------------------------------------------

def block_hashlib():
    t_end = until()
    while time.monotonic() < t_end:
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 20_000)  # CAUSE hashlib


def block_zlib():
    t_end = until()
    while time.monotonic() < t_end:
        zlib.compress(STATE["zblob"], 9)  # CAUSE zlib


# --- what a blocked call waits on ----------------------------------------------------------

BIG_LINE = "x" * (1 << 20)
DRAIN = threading.Event()


def pipe_stdout():
    """Point fd 1 at a pipe whose reader is 150 ms late every time; the READY/BLOCK protocol
    goes on through a copy of the original stdout."""
    sys.stdout = os.fdopen(os.dup(1), "w")
    r, w = os.pipe()
    os.dup2(w, 1)
    os.close(w)
    STATE["out"] = open(1, "w", closefd=False)

    def drain():
        while True:
            DRAIN.wait()
            DRAIN.clear()
            time.sleep(SECONDS)
            got = 0
            while got < len(BIG_LINE) + 1:
                got += len(os.read(r, 1 << 20))

    threading.Thread(target=drain, daemon=True, name="slow-reader").start()


def block_stdout_pipe():
    DRAIN.set()
    print(BIG_LINE, file=STATE["out"], flush=True)  # CAUSE stdout_pipe


CHILD = """
import sys, time
while True:
    first = sys.stdin.buffer.read(1)
    if not first:
        break
    time.sleep(%r)
    sys.stdin.buffer.read(%d - 1)
""" % (SECONDS, 1 << 20)


def block_child_pipe():
    STATE["child"].stdin.write(b"y" * (1 << 20))  # CAUSE child_pipe
    STATE["child"].stdin.flush()


def block_socket_read():
    s = socket.create_connection(("127.0.0.1", STATE["port"]))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    os.read(s.fileno(), 100)  # CAUSE socket_read
    s.close()


async def own_server():
    async def respond(reader, writer):
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    STATE["own"] = server.sockets[0].getsockname()[1]
    STATE["server"] = server


def block_self_call_http():
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/" % STATE["own"], timeout=SECONDS)  # CAUSE self_call_http
    except OSError:
        pass  # the timeout: the server that would answer is this very loop


def block_self_call_socket():
    s = socket.create_connection(("127.0.0.1", STATE["own"]), timeout=SECONDS)
    s.sendall(b"ping")
    try:
        s.recv(100)  # CAUSE self_call_socket
    except OSError:
        pass
    s.close()


# --- a driver under an ORM -----------------------------------------------------------------

# One run took 47 ms on Debian's builds and 72 ms on pyenv's, so the blockers repeat it for
# 150 ms.
CTE = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) "
       "SELECT sum(x) FROM c")


def block_sqlalchemy_session():
    Session, text = STATE["Session"], STATE["text"]
    t_end = until()
    with Session(STATE["engine"]) as session:
        while time.monotonic() < t_end:
            session.execute(text(CTE)).scalar()  # CAUSE sqlalchemy_session


def block_sqlalchemy_core():
    t_end = until()
    with STATE["file_engine"].connect() as conn:
        while time.monotonic() < t_end:
            conn.execute(STATE["text"](CTE)).scalar()  # CAUSE sqlalchemy_core


def block_sqlalchemy_postgres():
    with STATE["pg_engine"].connect() as conn:
        conn.execute(STATE["text"]("SELECT pg_sleep(%r)" % SECONDS))  # CAUSE sqlalchemy_postgres


def engines(name):
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session
    STATE["Session"], STATE["text"] = Session, text
    if name == "sqlalchemy_session":
        STATE["engine"] = create_engine("sqlite://")
    elif name == "sqlalchemy_core":
        path = os.path.join(tempfile.mkdtemp(prefix="loopspy-db-"), "app.db")
        STATE["file_engine"] = create_engine("sqlite:///" + path)
    else:
        # The socket directory and port of the PostgreSQL server the test started.
        host, port = os.environ["LOOPSPY_PG"].rsplit(":", 1)
        STATE["pg_engine"] = create_engine(
            "postgresql+psycopg2://postgres@/postgres?host=%s&port=%s" % (host, port))
    for key in ("engine", "file_engine", "pg_engine"):
        if key in STATE:
            # Connect and run once before READY: the first connection is not what is measured.
            with STATE[key].connect() as conn:
                conn.execute(text("SELECT 1"))


# --- blocking code run by machinery --------------------------------------------------------

class SlowHandler(logging.Handler):
    """A handler of the application's own whose emit sleeps (a slow sink)."""

    def emit(self, record):
        time.sleep(SECONDS)  # CAUSE log_handler_sleep


class SendingHandler(logging.Handler):
    """A handler of the application's own that sends each record and waits for the answer."""

    def emit(self, record):
        s = socket.create_connection(("127.0.0.1", STATE["port"]))
        s.sendall(b"GET /log HTTP/1.0\r\n\r\n")
        s.recv(100)  # CAUSE log_handler_send
        s.close()


def own_logger(name, handler):
    log = logging.getLogger("loopspy." + name)
    log.propagate = False
    log.addHandler(handler)
    return log


def block_log_handler_sleep():
    STATE["log"].warning("slow sink")


def block_log_handler_send():
    STATE["log"].warning("remote sink")


class Connection:
    def __del__(self):
        time.sleep(SECONDS)  # CAUSE finalizer


def block_finalizer():
    conn = Connection()
    del conn


class Resource:
    pass


def slow_cleanup():
    time.sleep(SECONDS)  # CAUSE weakref_finalize


def block_weakref_finalize():
    res = Resource()
    weakref.finalize(res, slow_cleanup)
    del res


# --- code generated at run time ------------------------------------------------------------

SLEEP_CODE = compile("import time\ntime.sleep(%r)\n" % SECONDS, "<string>", "exec")


def block_generated_exec():
    exec(SLEEP_CODE)  # CAUSE generated_exec


@dataclasses.dataclass
class Settings:
    # The generated __init__ (file `<string>`) calls the factory, which sleeps in C.
    loaded: object = dataclasses.field(default_factory=functools.partial(time.sleep, SECONDS))


def block_dataclass():
    Settings()  # CAUSE dataclass


BLOCKERS = {
    "regex": block_regex, "regex_compiled": block_regex_compiled, "gc": block_gc,
    "gc_flag": block_gc_flag, "import": block_import, "json": block_json,
    "pickle": block_pickle, "base64": block_base64, "yaml": block_yaml,
    "fastapi": block_fastapi, "pydantic": block_pydantic, "hashlib": block_hashlib,
    "zlib": block_zlib, "stdout_pipe": block_stdout_pipe, "child_pipe": block_child_pipe,
    "socket_read": block_socket_read, "self_call_http": block_self_call_http,
    "self_call_socket": block_self_call_socket,
    "sqlalchemy_session": block_sqlalchemy_session, "sqlalchemy_core": block_sqlalchemy_core,
    "sqlalchemy_postgres": block_sqlalchemy_postgres,
    "log_handler_sleep": block_log_handler_sleep, "log_handler_send": block_log_handler_send,
    "finalizer": block_finalizer, "weakref_finalize": block_weakref_finalize,
    "generated_exec": block_generated_exec, "dataclass": block_dataclass,
}

# Scenarios that need the slow HTTP server of causes.py.
NEEDS_SERVER = ("socket_read", "log_handler_send")


# --- GIL starvation by a worker thread: its own code is blamed -----------------------------

def decode_in_worker():
    base64.b64decode(STATE["b64"])  # CAUSE gil_base64


def collect_in_worker():
    gc.collect()  # CAUSE gil_gc


def match_in_worker():
    PATTERN.match(STATE["long_text"])  # CAUSE gil_regex


GIL_WORK = {"gil_base64": decode_in_worker, "gil_gc": collect_in_worker,
            "gil_regex": match_in_worker}


async def setup(name, port):
    """Prepare a scenario before READY: data, heaps, servers, pipes."""
    STATE["port"] = port
    if name in ("regex", "regex_compiled"):
        STATE["text"] = backtracking_text(0.01)
    elif name == "gil_regex":
        STATE["long_text"] = backtracking_text(0.12)
    elif name in ("gc", "gc_flag", "gil_gc"):
        STATE["heap"] = heap_taking(0.1)
    elif name == "import":
        write_heavy_module()
    elif name == "base64":
        STATE["blob"] = os.urandom(4_000_000)
    elif name == "gil_base64":
        STATE["b64"] = base64_taking(0.1)
    elif name == "zlib":
        STATE["zblob"] = os.urandom(1 << 20)
    elif name == "yaml":
        import yaml
        STATE["yaml"], STATE["doc"] = yaml, yaml.safe_dump(ROWS[:100])
    elif name == "fastapi":
        from fastapi.encoders import jsonable_encoder
        STATE["encoder"] = jsonable_encoder
    elif name == "pydantic":
        STATE["page"] = pydantic_page()
        # Validating SMALL_PAGE over and over makes garbage fast: on 3.15 the young-generation
        # collections it sets off were 17-35% of the loop's samples, and once half, which
        # loopspy rightly names `gc`. Fewer, larger collections keep this scenario about pydantic.
        gc.set_threshold(100_000)
    elif name == "stdout_pipe":
        pipe_stdout()
    elif name == "child_pipe":
        STATE["child"] = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE)
    elif name in ("self_call_http", "self_call_socket"):
        await own_server()
        # urlopen builds its opener (and loads the CA certificates) on first use: not here.
        urllib.request.install_opener(urllib.request.build_opener())
    elif name.startswith("sqlalchemy_"):
        engines(name)
    elif name == "log_handler_sleep":
        STATE["log"] = own_logger(name, SlowHandler())
    elif name == "log_handler_send":
        STATE["log"] = own_logger(name, SendingHandler())
    if name not in ("gc", "gc_flag", "gil_gc"):
        # Keep what start-up built out of later automatic collections, so the GC does not take
        # over a scenario about something else.
        gc.freeze()
