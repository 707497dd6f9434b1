"""A small ASGI server and router on the standard library alone, shaped like uvicorn and
Starlette: each connection's request runs in its own task (`Cycle.run_asgi`), the app is called
with an ASGI `scope` dict, and the router puts the matched route object (whose `.path` is the
template) in `scope["route"]`, as Starlette >= 0.33 and FastAPI do. It lets the request reader
be tested on every CPython without third-party packages.

Usage: python mini_asgi.py            prints `READY {"port": N}` once it listens on 127.0.0.1.
Routes (GET): /orders/{order_id}      blocks in time.sleep(0.15)       # handler get_order
              /health                 returns at once
              /ws-like                scope type "websocket" (no method) blocking in time.sleep
Each blocking handler prints `BLOCK {"ms": ..., "route": ..., "pid": ...}` after its block.
Stops when stdin closes.
"""
import asyncio
import json
import os
import re
import sys
import threading
import time


def say(tag, **fields):
    # One write: worker processes share the pipe, and print() under PYTHONUNBUFFERED writes
    # the text and its newline separately, so two workers' lines could interleave.
    os.write(1, ("%s %s\n" % (tag, json.dumps(fields))).encode())


class Route:
    def __init__(self, path, endpoint):
        self.path = path
        self.endpoint = endpoint
        self.regex = re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", path) + "$")


async def get_order(scope, order_id):
    t0 = time.monotonic()
    time.sleep(0.15)  # BLOCK-LINE get_order
    say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, route="/orders/{order_id}", pid=os.getpid())
    return b"order " + order_id.encode()


async def health(scope):
    return b"ok"


async def ws_like(scope):
    t0 = time.monotonic()
    time.sleep(0.15)  # BLOCK-LINE ws_like
    say("BLOCK", ms=(time.monotonic() - t0) * 1000.0, route="/ws-like", pid=os.getpid())
    return b"ws"


ROUTES = [Route("/orders/{order_id}", get_order), Route("/health", health), Route("/ws-like", ws_like)]


async def router(scope, receive, send):
    for route in ROUTES:
        m = route.regex.match(scope["path"])
        if m:
            scope["route"] = route
            scope["path_params"] = m.groupdict()
            body = await route.endpoint(scope, **m.groupdict())
            break
    else:
        body = b"not found"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    # A middleware-like layer, as every real stack has a few.
    await router(scope, receive, send)


class Cycle:
    def __init__(self, scope, writer):
        self.scope = scope
        self.writer = writer

    async def receive(self):
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message):
        if message["type"] == "http.response.body":
            body = message["body"]
            self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await self.writer.drain()

    async def run_asgi(self, app):
        await app(self.scope, self.receive, self.send)


async def handle(reader, writer):
    # One request per connection (the tests send `Connection: close`).
    line = await reader.readline()
    if line:
        method, target, _ = line.decode("latin-1").split(" ", 2)
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path, _, query = target.partition("?")
        kind = "websocket" if path == "/ws-like" else "http"
        scope = {"type": kind, "path": path, "raw_path": target.encode(), "query_string": query.encode(),
                 "headers": [(b"x-secret", b"never-read")], "root_path": ""}
        if kind == "http":
            scope["method"] = method
        cycle = Cycle(scope, writer)
        await asyncio.get_running_loop().create_task(cycle.run_asgi(app))
    writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    say("READY", port=port, pid=os.getpid())
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
