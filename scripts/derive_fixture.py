#!/usr/bin/env python3
"""Derive the jitter-and-gaps fixture from a real recording: every sample's timestamps get a
deterministic jitter of up to +-2 ms, every 7th sample is dropped (failed reads), and all samples
in one 60 ms window inside the second episode are removed (a sampler stall).

    python3 scripts/derive_fixture.py IN.jsonl OUT.jsonl
    python3 scripts/derive_fixture.py merge OUT.jsonl IN1.jsonl IN2.jsonl ...
"""
import json
import os
import sys


def main(src, dst):
    with open(src) as f:
        header = json.loads(f.readline())
        rows = [json.loads(l) for l in f if l.strip()]
    samples = [r for r in rows if "mono" in r]
    trailer = [r for r in rows if "stats" in r]
    # The second run of consecutive busy loop samples (an episode) gets the stall.
    busy = [i for i, s in enumerate(samples)
            if any(any(fr["function"] == "sleepy_handler" for fr in t["frames"]) for t in s["threads"])]
    starts = [b for k, b in enumerate(busy) if k == 0 or busy[k - 1] != b - 1]
    stall_from = samples[starts[1] + 5]["mono"] if len(starts) > 1 else -1
    out = []
    for i, s in enumerate(samples):
        if i % 7 == 3:
            continue
        if stall_from <= s["mono"] < stall_from + 0.06:
            continue
        j = ((i * 7919) % 5 - 2) * 0.001
        s["mono"] = round(s["mono"] + j, 6)
        s["wall"] = round(s["wall"] + j, 6)
        out.append(s)
    header["note"] = "derived from sleep_task.jsonl by scripts/derive_fixture.py: jitter, drops, a 60 ms stall"
    with open(dst, "w") as f:
        for r in [header] + out + trailer:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")




def merge(sources, dst):
    """Interleave recordings of different processes by time, as `--subprocesses` records
    several worker processes into one file."""
    headers, samples = [], []
    for src in sources:
        with open(src) as f:
            headers.append(json.loads(f.readline()))
            samples += [json.loads(l) for l in f if l.strip() and "mono" in l]
    samples.sort(key=lambda s: s["mono"])
    header = dict(headers[0])
    header["note"] = "merged from %s by scripts/derive_fixture.py merge" % ", ".join(os.path.basename(s) for s in sources)
    with open(dst, "w") as f:
        for r in [header] + samples:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "merge":
        merge(sys.argv[3:], sys.argv[2])
    else:
        main(*sys.argv[1:3])
