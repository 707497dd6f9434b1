#!/usr/bin/env python3
"""Draw a loopspy Perfetto trace (`--format perfetto`) as a small self-contained HTML page:
per event-loop thread, its episodes track (orange slices named by culprit) above its sampled
stacks (a flame chart over time), on one time axis. For docs and for a look without
ui.perfetto.dev (which needs the network); the trace itself opens there and in
chrome://tracing.

    python3 scripts/timeline_html.py TRACE.json OUT.html [--from MS] [--to MS] [--width PX]
"""
import argparse
import html
import math
import json

ROW = 16
COLORS = ["#9ecae1", "#a1d99b", "#c6dbef", "#bcbddc", "#d9d9d9", "#c7e9c0"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--from", dest="t0", type=float, default=None, help="ms")
    ap.add_argument("--to", dest="t1", type=float, default=None, help="ms")
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args()
    with open(args.trace) as f:
        trace = json.load(f)
    events = trace["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    order = {(e["pid"], e["tid"]): e["args"]["sort_index"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_sort_index"}
    slices = [e for e in events if e.get("ph") == "X"]
    t0 = args.t0 * 1000 if args.t0 is not None else min(e["ts"] for e in slices)
    t1 = args.t1 * 1000 if args.t1 is not None else max(e["ts"] + e["dur"] for e in slices)
    left, width = 230, args.width - 250
    x = lambda ts: left + (min(max(ts, t0), t1) - t0) / (t1 - t0) * width
    tracks = sorted({(e["pid"], e["tid"]) for e in slices} | set(names),
                    key=lambda k: (k[0], order.get(k, 0)))
    parts, y = [], 40
    # Time axis.
    raw = (t1 - t0) / 1000 / 10
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    for i in range(int(t0 / 1000 / step) + 1, int(t1 / 1000 / step) + 1):
        ms = i * step
        parts.append('<line x1="%.1f" y1="28" x2="%.1f" y2="100%%" stroke="#eee"/>'
                     '<text x="%.1f" y="22" font-size="11" fill="#555">%g ms</text>'
                     % (x(ms * 1000), x(ms * 1000), x(ms * 1000) + 2, ms))
    for key in tracks:
        mine = [e for e in slices if (e["pid"], e["tid"]) == key and e["ts"] < t1 and e["ts"] + e["dur"] > t0]
        label = names.get(key, "pid %s tid %s" % key)
        if mine and mine[0].get("cat") == "stack":
            # Depth of each slice from nesting (slices come outer first).
            stack, rows = [], []
            for e in sorted(mine, key=lambda e: (e["ts"], -e["dur"])):
                while stack and stack[-1] <= e["ts"]:
                    stack.pop()
                rows.append((len(stack), e))
                stack.append(e["ts"] + e["dur"])
            depth = max(d for d, _ in rows) + 1
        else:
            rows, depth = [(0, e) for e in mine], 1
        height = depth * ROW
        parts.append('<text x="6" y="%d" font-size="12" font-weight="bold">%s</text>'
                     % (y + 12, html.escape(label)))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="#ddd"/>'
                     % (left, y, width, height))
        for d, e in rows:
            x0, x1 = x(e["ts"]), x(e["ts"] + e["dur"])
            w = max(x1 - x0, 1)
            episode = e.get("cat") == "episode"
            color = "#f28e2b" if episode else COLORS[sum(map(ord, e["name"])) % len(COLORS)]
            tip = e["name"]
            if episode:
                a = e.get("args", {})
                tip += " | %s ms, %s, %s | %s" % (a.get("duration_ms"), a.get("kind"),
                                                  a.get("source"), a.get("advice"))
            parts.append('<g><title>%s</title><rect x="%.1f" y="%d" width="%.1f" height="%d" '
                         'fill="%s" stroke="white" stroke-width="0.5"/>'
                         % (html.escape(tip), x0, y + d * ROW, w, ROW - 1, color))
            if w > 40:
                chars = int(w / 6.2)
                text = e["name"] if len(e["name"]) <= chars else e["name"][:max(chars - 1, 1)] + "…"
                parts.append('<text x="%.1f" y="%d" font-size="10.5" clip-path="none">%s</text>'
                             % (x0 + 2, y + d * ROW + 12, html.escape(text)))
            parts.append("</g>")
        y += height + 18
    other = trace.get("otherData", {})
    title = "loopspy timeline: pid %s, Python %s, %s episodes (threshold %s ms)" % (
        other.get("pid"), other.get("python_version"), other.get("episodes"),
        other.get("threshold_ms"))
    page = ('<!doctype html><meta charset="utf-8"><title>%s</title>'
            '<body style="font-family:sans-serif;margin:8px">'
            '<div style="font-size:14px;font-weight:bold">%s</div>'
            '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
            'font-family="sans-serif">%s</svg></body>'
            % (html.escape(title), html.escape(title), args.width, y + 10, "".join(parts)))
    with open(args.out, "w") as f:
        f.write(page)


if __name__ == "__main__":
    main()
