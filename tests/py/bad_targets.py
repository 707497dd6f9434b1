"""Targets for loopspy's bad-input tests (tests/integration/cli.rs).

- `zombie`: forks a child that exits at once and is not reaped; prints
  `READY {"pid": <parent>, "zombie": <child>}` once the child is a zombie, then waits for stdin
  to close and reaps it.
- `no_loop`: a Python process that never starts an event loop; prints `READY {"pid": ...}` and
  waits for stdin to close.

Usage: python bad_targets.py zombie|no_loop
"""
import json
import os
import sys


def main():
    mode = sys.argv[1]
    if mode == "zombie":
        child = os.fork()
        if child == 0:
            os._exit(0)
        # Wait until the child has exited, without reaping it: it stays a zombie.
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
        print("READY " + json.dumps({"pid": os.getpid(), "zombie": child}), flush=True)
        sys.stdin.read()
        os.waitpid(child, 0)
    elif mode == "no_loop":
        print("READY " + json.dumps({"pid": os.getpid()}), flush=True)
        sys.stdin.read()
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
