"""Target for the src/remote live tests.

Threads:
  main      runs asyncio.run(...) (or uvloop with --uvloop) for the whole life of the process
  loop      a threading.Thread running its own event loop (run_forever)
  finished  ran a loop to completion, then idles: its running-loop slot says "no loop"
  plain     never touches asyncio; exits the process when stdin reaches EOF

Prints one line once every loop is running:
  READY main=<native_id>:<ident> loop=... finished=... plain=...
then runs until the test closes our stdin.
"""
import asyncio
import os
import sys
import threading

USE_UVLOOP = "--uvloop" in sys.argv
if USE_UVLOOP:
    import uvloop

    new_loop = uvloop.new_event_loop
else:
    new_loop = asyncio.new_event_loop

ids = {}
loop_ready = threading.Event()
finished_ready = threading.Event()
plain_ready = threading.Event()


def me():
    return "%d:%d" % (threading.get_native_id(), threading.get_ident())


def loop_thread():
    ids["loop"] = me()
    loop = new_loop()
    # Set from inside the loop, so READY really means "this loop is running".
    loop.call_soon(loop_ready.set)
    loop.run_forever()


def finished_thread():
    ids["finished"] = me()
    loop = new_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    finished_ready.set()
    threading.Event().wait()


def plain_thread():
    ids["plain"] = me()
    plain_ready.set()
    sys.stdin.read()
    os._exit(0)


async def amain():
    ids["main"] = me()
    for target in (loop_thread, finished_thread, plain_thread):
        threading.Thread(target=target, daemon=True).start()
    # Blocking the main loop briefly is fine: nothing is measured before READY.
    for ev in (loop_ready, finished_ready, plain_ready):
        ev.wait()
    print("READY " + " ".join("%s=%s" % kv for kv in sorted(ids.items())), flush=True)
    await asyncio.Event().wait()


if USE_UVLOOP:
    uvloop.run(amain())
else:
    asyncio.run(amain())
