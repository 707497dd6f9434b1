#!/usr/bin/env python3
"""Target slowdown: requests per second of an asyncio HTTP app with and without a profiler.

The app (this script with --serve) is a stdlib asyncio HTTP/1.1 server (asyncio.start_server,
keep-alive) answering each request with a small JSON document after a little CPU work. The load
generator (this script with --load) runs in another process on 127.0.0.1: --connections
keep-alive connections, each sending requests back to back, for --seconds after a one-second
warm-up. Configurations:

- none:          no profiler
- loopspy:       loopspy record --pid P (default rate: 1000 Hz ticks, 10 Hz stacks)
- py-spy 1000:   py-spy record --pid P --nonblocking --rate 1000
- py-spy 100:    py-spy record --pid P --nonblocking --rate 100

With --pin (the default on 2+ cores) the server runs on CPU 0, and the load generator and the
profiler on CPU 1: the profiler never takes CPU time from the server, so what is left is its
direct effect on the target (memory reads, /proc reads, py-spy's attach). --no-pin lets every
process run anywhere, so a profiler's CPU use competes with the server too. For each run the
table has the
requests per second, the server's CPU time per request (its direct cost, which other load on
the machine does not change) and the profiler's CPU use over the measured window. Each
configuration runs --repeats times against a fresh server, interleaved (one of each, then
again) so drift on the machine hits all alike; the table gives medians.

    python3 scripts/bench_throughput.py [--seconds 5] [--repeats 9] [--connections 16] [--no-pin]

Needs a release build (cargo build --release) and py-spy (python3 -m pip install py-spy).
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPSPY = os.path.join(ROOT, "target", "release", "loopspy")
TICK = os.sysconf("SC_CLK_TCK")


# --- the app ------------------------------------------------------------------------------

def work(n):
    """A little CPU work per request (about 250 µs on the reference VM), so the server, not the
    load generator, is the bottleneck."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


async def handle(reader, writer):
    try:
        while True:
            request = await reader.readline()
            if not request:
                break
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            body = json.dumps({"path": request.split()[1].decode(), "value": work(7000),
                               "items": list(range(10))}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # stdin closed: stop
    async with server:
        await stop.wait()


# --- the load generator -------------------------------------------------------------------

async def load(port, seconds, connections):
    """Print START when the measured window opens, then the requests answered in it and its
    length."""
    request = b"GET /item/42 HTTP/1.1\r\nHost: bench\r\n\r\n"
    counting = False
    done = 0
    end = None

    async def client():
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while end is None or time.monotonic() < end:
            writer.write(request)
            length = 0
            while True:
                line = await reader.readline()
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if counting:
                done += 1
        writer.close()

    tasks = [asyncio.ensure_future(client()) for _ in range(connections)]
    await asyncio.sleep(1.0)  # warm-up, not counted
    print("START", flush=True)
    counting = True
    t0 = time.monotonic()
    end = t0 + seconds
    await asyncio.gather(*tasks)
    print("DONE %d %f" % (done, time.monotonic() - t0), flush=True)


# --- the benchmark ------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pinned(cpu):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start_server(args):
    p = subprocess.Popen([args.python, os.path.abspath(__file__), "--serve"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=pinned(0 if args.pin else None))
    line = p.stdout.readline()
    assert line.startswith("READY"), line
    return p, int(line.split()[1])


def wait_for_line(stream, needle):
    """Read a profiler's output until it says it is sampling."""
    seen = []
    while True:
        line = stream.readline()
        if not line:
            sys.exit("profiler did not start:\n" + "".join(seen))
        seen.append(line)
        if needle in line:
            return


def start_profiler(config, pid, tmp, cpu):
    if config == "none":
        return None
    if config == "loopspy":
        cmd = [LOOPSPY, "record", "--pid", str(pid), "-o", os.path.join(tmp, "l.svg")]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             preexec_fn=pinned(cpu))
        wait_for_line(p.stderr, "loopspy: sampling process")
    else:
        rate = config.split()[1]
        cmd = ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--rate", rate,
               "--format", "raw", "-o", os.path.join(tmp, "p.txt")]
        # py-spy says it samples on stdout.
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             preexec_fn=pinned(cpu))
        wait_for_line(p.stdout, "Sampling process")
    return p


def stop_profiler(p):
    if p is None:
        return
    p.send_signal(signal.SIGINT)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()


def one_run(config, args, tmp):
    """(requests/s, server CPU µs per request, profiler CPU % of one core)."""
    server, port = start_server(args)
    prof = None
    try:
        prof = start_profiler(config, server.pid, tmp, 1 if args.pin else None)
        gen = subprocess.Popen([args.python, os.path.abspath(__file__), "--load", str(port),
                                "--seconds", str(args.seconds),
                                "--connections", str(args.connections)],
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=pinned(1 if args.pin else None))
        assert gen.stdout.readline().strip() == "START"
        s0 = cpu_seconds(server.pid)
        p0 = cpu_seconds(prof.pid) if prof else 0.0
        t0 = time.monotonic()
        done_line = gen.stdout.readline().split()
        wall = time.monotonic() - t0
        s1 = cpu_seconds(server.pid)
        p1 = cpu_seconds(prof.pid) if prof else 0.0
        gen.wait()
        assert done_line[0] == "DONE", done_line
        requests, window = int(done_line[1]), float(done_line[2])
        return (requests / window, (s1 - s0) / requests * 1e6, (p1 - p0) / wall * 100)
    finally:
        stop_profiler(prof)
        server.stdin.close()
        server.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--configs", default="none,loopspy,py-spy 1000,py-spy 100")
    ap.add_argument("--pin", dest="pin", action="store_true", default=os.cpu_count() >= 2,
                    help="server on CPU 0, load generator and profiler on CPU 1 (default on 2+ "
                    "cores)")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    if args.load:
        asyncio.run(load(args.load, args.seconds, args.connections))
        return

    configs = [c.strip() for c in args.configs.split(",")]
    if not os.path.exists(LOOPSPY):
        sys.exit("build first: cargo build --release")
    if any(c.startswith("py-spy") for c in configs) and not shutil.which("py-spy"):
        sys.exit("py-spy not found (python3 -m pip install py-spy)")
    print("app: asyncio.start_server on 127.0.0.1, keep-alive, JSON + a little CPU per request;"
          " %s; %d connections, %.0f s per run, %d runs each; %d cores%s"
          % (args.python, args.connections, args.seconds, args.repeats, os.cpu_count(),
             ", server on CPU 0, load and profiler on CPU 1" if args.pin else ""))
    results = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for c in configs:
                rps, us, prof = one_run(c, args, tmp)
                results[c].append((rps, us, prof))
                print("  run %d %-12s %8.0f req/s %7.1f µs CPU/request  profiler %5.1f %%"
                      % (i + 1, c, rps, us, prof), flush=True)
    med = {c: [statistics.median(r[k] for r in results[c]) for k in range(3)] for c in configs}
    base = med[configs[0]]
    print()
    print("| profiler | rate | requests/s | vs none | server CPU per request | vs none "
          "| profiler CPU |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        rps, us, prof = med[c]
        tool, _, rate = c.partition(" ")
        rate = {"none": "-", "loopspy": "1000 Hz ticks, 10 Hz stacks"}.get(c, rate + " Hz")
        print("| %s | %s | %.0f | %+.1f %% | %.1f µs | %+.1f %% | %.1f %% |" % (
            tool, rate, rps, (rps / base[0] - 1) * 100, us, (us / base[1] - 1) * 100, prof))
    print("(medians of %d runs; every run is listed above)" % args.repeats)


if __name__ == "__main__":
    main()
