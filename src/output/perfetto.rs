//! `--format perfetto`: a Chrome trace-event JSON file (the "JSON Object Format" of the Trace
//! Event Format) that ui.perfetto.dev and chrome://tracing open, to see *when* a loop froze
//! and what ran around it.
//!
//! - One process group per process (several with `--subprocesses`).
//! - Per event-loop thread, two tracks side by side: the thread's own track with one slice
//!   per blocking episode (named by its culprit; args: kind, source, route, advice,
//!   duration_ms, task, coroutine, complete), and `<thread> stacks`, the sampled stacks drawn
//!   as a flame chart over time: a frame stays open while consecutive samples share it.
//!   (Two tracks because the trace format only allows slices on one track to nest exactly,
//!   and an episode's edges do not fall on stack-sample edges.)
//! - Times are microseconds since the recording started (`otherData.start_wall` gives it in
//!   Unix seconds).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use anyhow::Result;
use serde_json::{json, Value};

use crate::acquire::sampler::SamplerStats;
use crate::analysis::detector::Detector;
use crate::episode::Episode;
use crate::output::labeled::{LabeledStack, Labeler};
use crate::pipeline::Observer;
use crate::recording::Header;
use crate::sample::{short_path, thread_label, Frame, Sample};

/// Stack slices kept at most (about 100 bytes each); later stacks are left out and the trace
/// says so.
const MAX_STACK_SLICES: usize = 1_000_000;

/// A stack track's tid: the loop thread's tid plus this, so it never meets a real tid (Linux
/// tids stay below 2^22) and still fits the 32 bits viewers read.
pub const STACKS_TID_OFFSET: u64 = 1 << 30;

/// Consecutive samples of one thread further apart than this (seconds) end the open frames (a
/// gap in sampling is not shown as one long call).
const MAX_GAP: f64 = 1.0;

/// A closed stack frame: wall-clock Unix seconds.
#[derive(Debug, Clone)]
struct Slice {
    name: String,
    start: f64,
    end: f64,
    /// 0 for the outermost frame: orders slices with equal times outer first.
    depth: usize,
}

#[derive(Debug, Default)]
struct ThreadTrack {
    name: Option<String>,
    /// Frames open now, outermost first: (label, start).
    open: Vec<(String, f64)>,
    last: Option<f64>,
    /// The time the last sample stands for, in seconds.
    last_weight: f64,
    slices: Vec<Slice>,
}

/// Collects episodes and loop-thread stacks, then writes the trace.
#[derive(Debug, Default)]
pub struct PerfettoTrace {
    tracks: BTreeMap<(u32, u32), ThreadTrack>,
    episodes: Vec<Episode>,
    slices: usize,
    dropped: usize,
    pids: BTreeSet<u32>,
}

fn frame_name(f: &Frame) -> String {
    if f.file.is_empty() {
        f.function.clone()
    } else {
        format!("{} ({})", f.function, short_path(&f.file))
    }
}

/// Microseconds from `origin` to `wall` (both Unix seconds).
fn us(origin: f64, wall: f64) -> i64 {
    ((wall - origin) * 1e6).round() as i64
}

impl PerfettoTrace {
    pub fn new() -> PerfettoTrace {
        PerfettoTrace::default()
    }

    /// A loop thread's stack sample (others are ignored). Samples of a thread come in time
    /// order.
    pub fn add_stack(&mut self, s: &LabeledStack) {
        if !s.loop_thread {
            return;
        }
        self.pids.insert(s.pid);
        let ts = s.wall;
        let track = self.tracks.entry((s.pid, s.tid)).or_default();
        if let Some(name) = &s.thread {
            track.name = Some(name.to_string());
        }
        if track.last.is_some_and(|last| ts < last) {
            return;
        }
        if let Some(last) = track.last {
            if ts - last > MAX_GAP.max(2.0 * track.last_weight) {
                let end = last + track.last_weight;
                close_from(track, 0, end, &mut self.slices);
            }
        }
        let names: Vec<String> = s.frames.iter().rev().map(frame_name).collect();
        let common = track
            .open
            .iter()
            .zip(&names)
            .take_while(|(open, name)| open.0 == **name)
            .count();
        close_from(track, common, ts, &mut self.slices);
        if self.slices >= MAX_STACK_SLICES {
            self.dropped += 1;
        } else {
            for name in names.into_iter().skip(common) {
                track.open.push((name, ts));
            }
        }
        track.last = Some(ts);
        track.last_weight = s.weight_ms as f64 / 1000.0;
    }

    pub fn add_episode(&mut self, ep: &Episode) {
        self.pids.insert(ep.pid);
        let track = self.tracks.entry((ep.pid, ep.tid)).or_default();
        if track.name.is_none() {
            track.name.clone_from(&ep.thread);
        }
        self.episodes.push(ep.clone());
    }

    /// Write the trace, with times counted from `origin` (the recording's start, Unix
    /// seconds). `meta` goes to `otherData`: what the recording was.
    pub fn write(mut self, origin: f64, meta: Value, out: &mut dyn Write) -> Result<()> {
        for track in self.tracks.values_mut() {
            if let Some(last) = track.last {
                close_from(track, 0, last + track.last_weight, &mut self.slices);
            }
        }
        let mut events: Vec<Value> = Vec::new();
        let multi = self.pids.len() > 1;
        for pid in &self.pids {
            events.push(
                json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                "args": {"name": format!("python pid {pid}")}}),
            );
            events.push(
                json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                "args": {"sort_index": if multi { *pid as i64 } else { 0 }}}),
            );
        }
        for (i, ((pid, tid), track)) in self.tracks.iter().enumerate() {
            let label = thread_label(track.name.as_deref(), *tid);
            let stacks_tid = *tid as u64 + STACKS_TID_OFFSET;
            events.push(
                json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                "args": {"name": format!("{label}: episodes")}}),
            );
            events.push(
                json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                "args": {"sort_index": 2 * i}}),
            );
            events.push(
                json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": stacks_tid,
                "args": {"name": format!("{label}: stacks")}}),
            );
            events.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid,
                "tid": stacks_tid, "args": {"sort_index": 2 * i + 1}}));
            // Outer frames first at equal start, so viewers nest them right.
            let mut slices: Vec<(i64, i64, usize, &str)> = track
                .slices
                .iter()
                .map(|s| {
                    let ts = us(origin, s.start);
                    (
                        ts,
                        (us(origin, s.end) - ts).max(1),
                        s.depth,
                        s.name.as_str(),
                    )
                })
                .collect();
            slices.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            for (ts, dur, _, name) in slices {
                events.push(json!({"ph": "X", "cat": "stack", "name": name, "pid": pid,
                    "tid": stacks_tid, "ts": ts, "dur": dur}));
            }
        }
        let mut episodes = std::mem::take(&mut self.episodes);
        episodes.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.tid.cmp(&b.tid)));
        for ep in &episodes {
            let ts = us(origin, ep.start);
            let dur = (ep.duration_ms * 1000.0).round().max(1.0) as i64;
            events.push(json!({
                "ph": "X", "cat": "episode", "name": ep.culprit_label(),
                "pid": ep.pid, "tid": ep.tid, "ts": ts, "dur": dur,
                "args": {
                    "kind": ep.kind,
                    "source": ep.source,
                    "route": crate::output::route_of(ep),
                    "advice": ep.advice,
                    "duration_ms": (ep.duration_ms * 10.0).round() / 10.0,
                    "task": ep.task,
                    "coroutine": ep.coroutine,
                    "complete": ep.complete,
                },
            }));
        }
        let mut other = meta;
        if let Value::Object(m) = &mut other {
            m.insert("start_wall".into(), json!(origin));
            m.insert("episodes".into(), json!(episodes.len()));
            if self.dropped > 0 {
                m.insert(
                    "note".into(),
                    json!(format!(
                        "{} later stack samples left out after {MAX_STACK_SLICES} slices",
                        self.dropped
                    )),
                );
            }
        }
        let doc = json!({
            "displayTimeUnit": "ms",
            "otherData": other,
            "traceEvents": events,
        });
        // One event per line: diffable, and still one JSON document.
        out.write_all(b"{\"displayTimeUnit\":\"ms\",\"otherData\":")?;
        serde_json::to_writer(&mut *out, &doc["otherData"])?;
        out.write_all(b",\"traceEvents\":[\n")?;
        let events = doc["traceEvents"].as_array().map_or(&[][..], |v| &v[..]);
        for (i, e) in events.iter().enumerate() {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(if i + 1 < events.len() { b",\n" } else { b"\n" })?;
        }
        out.write_all(b"]}\n")?;
        Ok(())
    }
}

/// `--format perfetto`: the trace of a whole recording, written at the end.
pub struct PerfettoFile {
    labeler: Labeler,
    trace: PerfettoTrace,
    threshold_ms: f64,
}

impl PerfettoFile {
    pub fn new(threshold_ms: f64) -> PerfettoFile {
        PerfettoFile {
            // Idle stacks too: the timeline shows when the loop waited.
            labeler: Labeler::new(true, true, false),
            trace: PerfettoTrace::new(),
            threshold_ms,
        }
    }
}

impl Observer for PerfettoFile {
    fn on_sample(&mut self, sample: &Sample, detector: &Detector) {
        let t = &mut self.trace;
        self.labeler
            .on_sample(sample, detector, &mut |s| t.add_stack(&s));
    }

    fn on_episode(&mut self, episode: &Episode) {
        let t = &mut self.trace;
        self.labeler.on_episode(episode, &mut |s| t.add_stack(&s));
        t.add_episode(episode);
    }

    fn finish(
        &mut self,
        header: &Header,
        stats: &SamplerStats,
        out: Option<&mut dyn Write>,
    ) -> Result<()> {
        let t = &mut self.trace;
        self.labeler.finish(&mut |s| t.add_stack(&s));
        let Some(out) = out else { return Ok(()) };
        let meta = json!({
            "tool": "loopspy",
            "pid": header.pid,
            "command": header.command,
            "python_version": header.python_version,
            "threshold_ms": self.threshold_ms,
            "samples": stats.samples,
        });
        std::mem::take(&mut self.trace).write(header.start_wall, meta, out)
    }

    fn what(&self) -> &'static str {
        "Perfetto trace"
    }
}

/// Close the open frames from depth `from` on at `end`, innermost first.
fn close_from(track: &mut ThreadTrack, from: usize, end: f64, count: &mut usize) {
    while track.open.len() > from {
        let (name, start) = track.open.pop().expect("non-empty");
        let depth = track.open.len();
        track.slices.push(Slice {
            name,
            start,
            end,
            depth,
        });
        *count += 1;
    }
}

/// Per track, the number of slices (for tests).
pub fn slice_counts(trace: &Value) -> HashMap<(i64, i64), usize> {
    let mut out = HashMap::new();
    for e in trace["traceEvents"].as_array().into_iter().flatten() {
        if e["ph"] == "X" {
            let key = (
                e["pid"].as_i64().unwrap_or(0),
                e["tid"].as_i64().unwrap_or(0),
            );
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::episode::Location;
    use std::sync::Arc;

    fn stack(wall: f64, top: &str) -> LabeledStack {
        let f = |function: &str| Frame {
            function: function.into(),
            file: "/app/main.py".into(),
            line: 1,
        };
        LabeledStack {
            wall,
            mono: wall - 1000.0,
            pid: 7,
            tid: 7,
            thread: Some(Arc::from("MainThread")),
            task: None,
            frames: Arc::from(vec![f(top), f("run_forever")]),
            weight_ms: 100,
            loop_thread: true,
            blocked: false,
            kind: None,
            route: None,
        }
    }

    #[test]
    fn stacks_nest_and_episodes_get_their_slice() {
        let mut t = PerfettoTrace::new();
        t.add_stack(&stack(1000.0, "a"));
        t.add_stack(&stack(1000.1, "a"));
        t.add_stack(&stack(1000.2, "b"));
        let loc = Location {
            function: "b".into(),
            file: "/app/main.py".into(),
            line: 1,
        };
        t.add_episode(&Episode {
            pid: 7,
            tid: 7,
            thread: Some("MainThread".into()),
            start: 1000.15,
            duration_ms: 120.0,
            duration_error_ms: Some(1.0),
            start_seen: true,
            samples: 3,
            kind: "sleep".into(),
            source: Some("time.sleep".into()),
            task: None,
            coroutine: None,
            culprit: loc.clone(),
            stack: vec![loc],
            gil_holder: None,
            advice: Some("use asyncio.sleep".into()),
            complete: true,
            ..Default::default()
        });
        let mut out = Vec::new();
        t.write(1000.0, json!({}), &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let xs: Vec<&Value> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect();
        // run_forever 0..300 ms, a 0..200, b 200..300 on the stacks track; one episode.
        let stacks: Vec<(String, i64, i64)> = xs
            .iter()
            .filter(|e| e["cat"] == "stack")
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["ts"].as_i64().unwrap(),
                    e["dur"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            stacks,
            [
                ("run_forever (app/main.py)".to_string(), 0, 300_000),
                ("a (app/main.py)".to_string(), 0, 200_000),
                ("b (app/main.py)".to_string(), 200_000, 100_000),
            ]
        );
        let ep = xs.iter().find(|e| e["cat"] == "episode").unwrap();
        assert_eq!(ep["name"], "b (app/main.py:1)");
        assert_eq!(ep["ts"], 150_000);
        assert_eq!(ep["dur"], 120_000);
        assert_eq!(ep["args"]["kind"], "sleep");
        assert_eq!(ep["args"]["route"], Value::Null);
        assert_eq!(ep["tid"], 7);
    }
}
