"""A small asyncio web service with invisible blocking in it, for trying loopspy.

It serves HTTP on 127.0.0.1 and drives itself with a built-in load generator, so one command
shows everything. Four places block the event loop the way real services do:

- /user   calls a "legacy" synchronous client that sleeps (think requests.get or a sync DB driver);
- /report renders a report in pure Python (CPU-bound work on the loop);
- /audit  appends to an audit file and fsyncs it, from a `call_soon` callback;
- /export compresses an export with an external tool through `subprocess.run` (a 1.2 s hang).

The other endpoints are healthy. It stops by itself after --seconds (default 8).
With --fixed, /user and /export are fixed the way loopspy's advice says (the lookup runs in a
thread, the export awaits an asyncio subprocess): record both and compare with `loopspy diff`.

    loopspy record -o demo.svg --episodes demo.jsonl -- python3 examples/demo_app.py
"""
import argparse
import asyncio
import os
import random
import subprocess
import tempfile
import time


def legacy_user_lookup(user_id):
    """A synchronous client call, as a library that does blocking I/O would make it."""
    time.sleep(0.12)  # the network round trip of a blocking client
    return {"id": user_id, "name": "user%d" % user_id}


def render_report(rows):
    """Pure-Python number crunching on the event loop."""
    total = 0
    for i in range(rows):
        total += sum(j * j for j in range(60))
    return str(total)


def compress_export():
    """A blocking call to an external tool: the loop hangs until it exits."""
    subprocess.run(["sleep", "1.2"], check=True)
    return "exported"


AUDIT = tempfile.NamedTemporaryFile(prefix="loopspy-demo-audit-", delete=False)


def write_audit(line):
    AUDIT.write(line.encode() + b"\n")
    AUDIT.flush()
    os.fsync(AUDIT.fileno())
    time.sleep(0.06)  # a slow disk


FIXED = False


async def compress_export_fixed():
    proc = await asyncio.create_subprocess_exec("sleep", "1.2")
    await proc.wait()
    return "exported"


async def handle(reader, writer):
    request = await reader.readline()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    path = request.split()[1].decode() if len(request.split()) > 1 else "/"
    if path.startswith("/user") and FIXED:
        body = str(await asyncio.to_thread(legacy_user_lookup, random.randint(1, 1000)))
    elif path.startswith("/user"):
        body = str(legacy_user_lookup(random.randint(1, 1000)))
    elif path.startswith("/export") and FIXED:
        body = await compress_export_fixed()
    elif path.startswith("/report"):
        body = render_report(60000)
    elif path.startswith("/export"):
        body = compress_export()
    elif path.startswith("/audit"):
        asyncio.get_running_loop().call_soon(write_audit, "audit %f" % time.time())
        body = "queued"
    else:
        await asyncio.sleep(0.001)
        body = "ok"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
    await writer.drain()
    writer.close()


async def get(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET %s HTTP/1.1\r\nHost: demo\r\n\r\n" % path).encode())
    await writer.drain()
    await reader.read()
    writer.close()


async def load(port, seconds):
    paths = ["/", "/", "/", "/health", "/user", "/", "/report", "/", "/audit", "/"]
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        # One export every 30 requests, starting with the 12th.
        path = "/export" if i % 30 == 11 else paths[i % len(paths)]
        await get(port, path)
        i += 1
        await asyncio.sleep(0.05)


async def main(seconds):
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("demo: serving on 127.0.0.1:%d for %.0f s" % (port, seconds), flush=True)
    async with server:
        await load(port, seconds)
    os.unlink(AUDIT.name)
    print("demo: done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--fixed", action="store_true", help="the /user and /export fixes")
    args = parser.parse_args()
    FIXED = args.fixed
    asyncio.run(main(args.seconds))
