"""A long-running asyncio service for `loopspy monitor`'s tests and soak script.

Protocol: prints `READY {json}` once its loop runs, then reads commands on stdin, one a line:
- `block MS`: the loop runs one callback that blocks for MS milliseconds in `time.sleep`
  (`blocking_handler`); when it ends the script prints `BLOCKED {"ms": measured}`;
- `tasks N`: start N tasks that wait forever (for the task gauge); prints `TASKS {"n": N}`;
- `quit` (or end of input): exit.
With `--auto MS GAP_MS`, it blocks MS every GAP_MS by itself forever (the soak), no stdin.
"""
import asyncio
import json
import sys
import threading
import time


def say(tag, **fields):
    # One write: print() writes its pieces separately, and another thread's line (a GIL hog's
    # BLOCK, loopgap's GAP) can land between them.
    sys.stdout.write("%s %s\n" % (tag, json.dumps(fields)))
    sys.stdout.flush()


def blocking_handler(ms):
    t0 = time.monotonic()
    time.sleep(ms / 1000.0)  # BLOCK-LINE monitor
    return (time.monotonic() - t0) * 1000.0


async def run_block(ms):
    measured = blocking_handler(ms)
    say("BLOCKED", ms=measured)


async def idle_forever():
    await asyncio.Event().wait()


async def ticker():
    # Ordinary short work, so the loop is not only idle.
    while True:
        await asyncio.sleep(0.05)


async def auto(ms, gap_ms):
    n = 0
    while True:
        await asyncio.sleep(gap_ms / 1000.0)
        blocking_handler(ms)
        n += 1


async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    keep = []
    keep.append(asyncio.ensure_future(ticker()))
    if len(sys.argv) > 2 and sys.argv[1] == "--auto":
        keep.append(asyncio.ensure_future(auto(float(sys.argv[2]), float(sys.argv[3]))))
        say("READY", mode="auto")
        await done
        return

    def start_tasks(n):
        for _ in range(n):
            keep.append(asyncio.ensure_future(idle_forever()))
        say("TASKS", n=n)

    def reader():
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "block":
                asyncio.run_coroutine_threadsafe(run_block(float(parts[1])), loop)
            elif parts[0] == "tasks":
                loop.call_soon_threadsafe(start_tasks, int(parts[1]))
            elif parts[0] == "quit":
                break
        loop.call_soon_threadsafe(done.set_result, None)

    threading.Thread(target=reader, daemon=True).start()
    say("READY", mode="commands")
    await done


if __name__ == "__main__":
    asyncio.run(main())
