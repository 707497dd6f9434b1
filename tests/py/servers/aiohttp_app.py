"""An aiohttp server whose handler does blocking file I/O (tests/integration/servers).

Usage: python aiohttp_app.py DIR   prints `READY {"port": N, "pid": P}` once it listens on
127.0.0.1; POST /reports/{name} appends to DIR/name with write+fsync for 150 ms (blocking the
loop); each request prints `BLOCK {"ms": ..., "route": ..., "pid": ...}`. Stops when stdin closes.
"""
import asyncio
import json
import os
import sys
import threading
import time

from aiohttp import web

DATA = sys.argv[1]


def say(tag, **fields):
    # One write: worker processes share the pipe, and print() under PYTHONUNBUFFERED writes
    # the text and its newline separately, so two workers' lines could interleave.
    os.write(1, ("%s %s\n" % (tag, json.dumps(fields))).encode())


async def save_report(request):
    # Saving an upload the blocking way: write and fsync on the loop, for about 150 ms.
    t0 = time.monotonic()
    with open(os.path.join(DATA, request.match_info["name"]), "ab") as f:
        while time.monotonic() < t0 + 0.15:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())  # BLOCK-LINE aiohttp
    say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, route="/reports/{name}", pid=os.getpid())
    return web.Response(text="saved")


async def main():
    app = web.Application()
    app.router.add_post("/reports/{name}", save_report)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    say("READY", port=port, pid=os.getpid())
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
